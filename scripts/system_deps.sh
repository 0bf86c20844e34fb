#!/usr/bin/env bash
# Make sure the system programs and libraries mlx-circuits needs are present:
#   1. Graphviz's `dot` (circuit figures): required.
#   2. an optimised BLAS on Linux (MLX's wheel ships a ~5 GFLOP/s reference BLAS): strongly advised.
#   3. Chromium (the headless-browser tests of the HTML dashboards and report,
#      tests/viz/test_viz_browser.py): optional; MLX_CIRCUITS_NO_BROWSER=1 skips it.
# Installs what is missing with apt-get when root on Debian/Ubuntu (one `apt-get update`,
# one `apt-get install`), with brew on macOS; otherwise stops (dot) or warns (BLAS,
# Chromium) with the exact command to run.
set -u
os=$(uname -s)
need_apt=()
have_openblas() {
  for d in /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /usr/lib64 /usr/lib; do
    for f in "$d"/openblas-pthread/libopenblas.so.0 "$d"/openblas-openmp/libopenblas.so.0 "$d"/libopenblas.so.0; do
      [ -e "$f" ] && return 0
    done
  done
  return 1
}
have_chromium() {
  # the names tests/viz/test_viz_browser.py looks for
  [ -x /usr/bin/chromium ] || command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1
}
want_browser() { [ "${MLX_CIRCUITS_NO_BROWSER:-0}" != "1" ]; }
if [ "$os" = "Linux" ]; then
  command -v dot >/dev/null 2>&1 || need_apt+=(graphviz)
  have_openblas || need_apt+=(libopenblas0-pthread)
  # Debian's package is `chromium`; Ubuntu's `chromium-browser` is a snap shim, so name
  # the Debian one and let the Ubuntu user read the hint below.
  want_browser && ! have_chromium && need_apt+=(chromium)
  if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
      echo "system_deps: installing ${need_apt[*]} with apt-get"
      apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null \
        || { echo "system_deps: apt-get install ${need_apt[*]} failed" >&2; exit 1; }
    else
      echo "system_deps: missing ${need_apt[*]}." >&2
      echo "  Install them with:  sudo apt-get update && sudo apt-get install -y ${need_apt[*]}" >&2
      echo "  (other distributions: your package manager's graphviz, openblas and chromium packages)" >&2
      command -v dot >/dev/null 2>&1 || exit 1
      have_openblas || echo "system_deps: continuing without OpenBLAS: MLX will run ~50x slower" >&2
      want_browser && ! have_chromium && echo "system_deps: continuing without Chromium: the browser tests" \
        "(tests/viz/test_viz_browser.py) skip, and fail when CI is set; MLX_CIRCUITS_NO_BROWSER=1 silences this" >&2
    fi
  fi
elif [ "$os" = "Darwin" ]; then
  if ! command -v dot >/dev/null 2>&1; then
    if command -v brew >/dev/null 2>&1; then brew install graphviz || exit 1
    else echo "system_deps: Graphviz missing. Install Homebrew, then: brew install graphviz" >&2; exit 1; fi
  fi
  if want_browser && ! have_chromium; then
    echo "system_deps: Chromium missing (browser tests skip). Install it with: brew install --cask chromium" >&2
  fi
fi
command -v dot >/dev/null 2>&1 || { echo "system_deps: 'dot' still not found; install Graphviz" >&2; exit 1; }
exit 0
