"""The local stack for trying drills without a cluster: real vLLM (CPU) + Toxiproxy."""
