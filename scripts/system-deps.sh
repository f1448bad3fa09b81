#!/usr/bin/env bash
# Installs GROMACS and VOTCA from Debian when they are missing (tests, .top includes, csg_map parity).
set -euo pipefail
if command -v gmx >/dev/null && command -v csg_map >/dev/null; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null; then SUDO=sudo; else
    echo "backmap: GROMACS/VOTCA missing and not root; install them: apt-get install gromacs votca" >&2
    exit 1
  fi
fi
echo "backmap: installing GROMACS and VOTCA (apt-get, once)" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq gromacs votca >/dev/null
