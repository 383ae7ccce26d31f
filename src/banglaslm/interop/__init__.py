"""Interop: Hugging Face export and import through one table of tensor names, a LoRA run's adapter for
the Hugging Face model (peft), and GGUF export for llama.cpp."""
