"""Model provisioning: the catalog of known models, fetching and converting weights into the
shared cache, loading a base model with its adapters, adapter cards, content-addressed
models and adapters, and merging adapters.  Beneath ``serve`` and ``remote``; imports no
serving code.  Importing this package is light: each module loads torch only when it runs."""
