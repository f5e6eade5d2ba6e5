"""The llama.cpp engine: the catalog GGUF served as it is, batched through llama.cpp's low-level API."""
