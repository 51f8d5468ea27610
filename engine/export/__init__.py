"""Exports of a run or model: merge into 16-bit safetensors, convert to GGUF with its Ollama Modelfile, and the
export as a background job (with the optional hub upload).

May import every stage up to engine.training (its checkpoint file names).
"""
