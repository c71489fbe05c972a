"""Model zoo: registry of offline-installable models, loaders, and toy models with known heads."""
