"""Hooked-model core: HookedModel, Recorder, datasets/batches and tidy-row helpers."""
