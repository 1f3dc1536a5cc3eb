"""Hugging Face interop: decoders out to `transformers` (GPT-2 and LLaMA layouts) and public
GPT-2/LLaMA checkpoints in. Needs the hf extra (`pip install 'lmjax[hf]'`: transformers,
safetensors, torch); the rest of lmjax never imports this package."""
