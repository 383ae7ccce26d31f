"""Interop: Hugging Face export and import through one table of tensor names, and GGUF export for llama.cpp."""
