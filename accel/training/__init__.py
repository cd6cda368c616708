"""The embedded models: random tiny builders, and training of the pocket VAE and transformers on procedural clips."""
