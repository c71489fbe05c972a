"""Model core: the model interface (core.model), HookedModel, SpeechModel, Recorder, datasets, tidy rows."""
