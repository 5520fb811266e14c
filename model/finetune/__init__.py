"""Fine-tuning of pretrained diffusers video transformers on curated shards (``vidsift finetune``).

- families.py: one adapter per family (Wan 2.1, LTX-Video, CogVideoX);
- shards.py: the clip index and size buckets;
- latents.py: the cache of family latents and caption embeddings (``vidsift encode --vae diffusers:NAME``);
- loop.py: the config and the one training loop;
- checkpoint.py: exact-resume state, LoRA and full-model outputs.
"""
