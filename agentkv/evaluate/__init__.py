"""Accuracy measurements a user runs on their own checkpoint (torch is imported only inside the commands)."""
