# The full sibnn environment. Vivado/Vitis are not redistributable: mount them from the host, e.g.
#   docker build -t sibnn .
#   docker run --rm -v /tools/Xilinx:/tools/Xilinx -e XILINX_VIVADO=/tools/Xilinx/Vivado/2024.2 \
#       -v $PWD:/work -w /work sibnn make build
# The install is the same script the Makefile runs (scripts/install.sh).
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends \
        make git build-essential dataset-fashion-mnist \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/sibnn
COPY . .
ENV TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN bash scripts/install.sh
ENV PATH=/opt/sibnn/.venv/bin:$PATH
CMD ["make", "build"]
