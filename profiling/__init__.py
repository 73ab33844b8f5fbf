"""Endpoint I/O: prompt rendering, graders, the replay LLM endpoint and the response collector."""
