"""Datasets and what turns them into training examples: formats (read, detect, map, render, tokenize), named chat
templates, the identity dataset generator, and the micro-batch collator.

May import engine.core.
"""
