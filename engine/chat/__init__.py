"""Chatting with a trained or downloaded model: the chat session, the batch-1 decoder and its own decode step, and
chat with a GGUF file through llama.cpp.

May import every stage up to engine.models.
"""
