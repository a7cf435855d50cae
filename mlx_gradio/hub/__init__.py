"""The Hugging Face Hub: search, model details, the token, downloads into the shared cache."""
