"""The container runtime: Docker lifecycle (aiodocker) and the container protocol client."""
