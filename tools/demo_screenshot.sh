#!/usr/bin/env bash
# Builds wgpt-demo, runs it under a virtual X server (Xvfb) on Mesa's software Vulkan driver
# (lavapipe), generates from a prompt and saves a screenshot of the window: the README's picture.
#
#   tools/demo_screenshot.sh [OUT.png] [PROMPT]      (default: assets/demo.png, "The borrow checker")
#
# Needs: apt-get install -y xvfb xauth mesa-vulkan-drivers libvulkan1 libxkbcommon-x11-0
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-assets/demo.png}"
prompt="${2:-The borrow checker}"
tokens="${TOKENS:-40}"

command -v xvfb-run >/dev/null || { echo "xvfb-run not found: apt-get install -y xvfb xauth" >&2; exit 1; }
cargo build --release --features demo --bin wgpt-demo

# lavapipe's ICD only, so the run does not depend on the machine's GPU.
icd=$(ls /usr/share/vulkan/icd.d/lvp_icd*.json 2>/dev/null | head -n1 || true)
[ -n "$icd" ] && export VK_ICD_FILENAMES="$icd"
export WGPU_BACKEND=vulkan WINIT_UNIX_BACKEND=x11
unset WAYLAND_DISPLAY
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"

start=$(date +%s)
timeout 300 xvfb-run -a -s "-screen 0 1280x800x24" \
    target/release/wgpt-demo --prompt "$prompt" --seed 1 --after-tokens "$tokens" \
    --screenshot "$out" --size 1280x800
echo "$out: $(stat -c %s "$out") bytes, $(( $(date +%s) - start )) s"
