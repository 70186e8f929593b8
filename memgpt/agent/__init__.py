"""The MemGPT agent: its step loop, its functions and its prompts."""
