"""Training on top of the elastic core: nested LoRA fine-tuning and healing a slice by distillation."""
