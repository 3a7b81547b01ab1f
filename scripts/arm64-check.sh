#!/usr/bin/env bash
# lfm2-edge on arm64 (Raspberry Pi 4 and Pi 5), checked on an x86-64 Debian machine under emulation.
#
#   sudo scripts/arm64-check.sh [--work DIR] [--jobs N] [--suite fast|full|smoke|none] [--suite-libs pi4|pi5]
#                               [--stages LIST] [--redo LIST] [--x86-python PY] [--ci] [-- PYTEST ARGS]
#
# --ci: the part that fits CI (no arm64 root, no Python under emulation): stages host, build, models, cgreedy.
#
# Stages (each one idempotent; the slow ones leave a stamp in WORK/stamps and are skipped on a rerun,
# --redo STAGE runs one again; every stage's output goes to WORK/logs/STAGE.log, its time to
# WORK/logs/times.tsv):
#   host     Debian packages: debootstrap, qemu-user-static, binfmt-support, the aarch64 cross gcc/g++, cmake
#            (apt runs only for what is missing)
#   root     an arm64 Debian bookworm root (debootstrap --arch=arm64 --foreign, second stage under qemu, through
#            binfmt_misc)
#   build    llama-cpp-python 0.3.36's vendored llama.cpp cross-built twice with aarch64-linux-gnu-gcc:
#            pi4 = no -march (armv8-a + NEON: runs on every 64-bit Pi), pi5 = -march=armv8.2-a+dotprod+fp16
#            (Cortex-A76), each packed with llama-cpp-python's Python files as a linux_aarch64 wheel
#   wheels   lfm2-edge's dependencies (and [dev]) as aarch64 wheels for CPython 3.11, downloaded on the host
#   install  two virtual environments in the root, /opt/lfm2-pi4 and /opt/lfm2-pi5, each with its llama-cpp-python
#            wheel, the dependencies and lfm2-edge from this working tree (copied to /src/lfm2-edge; always rerun)
#   models   the synthetic tiny F16 + Q4_0 pairs and a test image, written on the host (x86)
#   cgreedy  llama.cpp's own greedy loop (scripts/arm64_greedy.c, its C API only) compiled for x86 against the
#            .venv's libraries and for aarch64 against each cross-built set, run under qemu-aarch64 on the CPU
#            of each board: F16 must give x86's token ids, F16's and Q4_0's logits along x86's answer must
#            stay within a bound of x86's, where Q4_0 parts from x86 is reported (VARIANTS below;
#            scripts/arm64_compare.py compares); and the Pi 5 set's features against a
#            Cortex-A72's auxv words through lfm2-edge's own CPU check (it must refuse; the loop itself dies
#            of SIGILL there)
#   smoke    --version, info, info --json, doctor, doctor --json for each build on the CPU it is for
#   greedy   a greedy chat with an image on F16 and Q4_0: x86, pi4 libs on a Cortex-A72, pi5 libs on a Cortex-A76,
#            pi4 libs on a Cortex-A76 (one set of libraries for both boards): F16 must equal x86 everywhere,
#            the pi4 libs must answer the same on both CPUs, and where Q4_0 parts from x86 is reported;
#            doctor's repacked copy against llama.cpp's CPU_REPACK buffer; and pi5 libs
#            on a Cortex-A72 (a card moved from a Pi 5 to a Pi 4): one clear line and exit 2
#   memory   doctor's estimate for a 450M-shaped Q4_0 model against llama.cpp's own buffer sizes, per build
#   suite    the test suite in the root under emulation (--suite fast: -m 'not slow', ~48 min on 2 busy cores;
#            full: everything; smoke: a documented subset of a few minutes; none: skipped)
#
# The CPU of each run is QEMU_CPU (qemu-user's model of a Cortex-A72 or A76: the instructions, not the speed).
# Emulation is 15-500x slower than a board: no time measured here says anything about a Pi.
# Needs root (debootstrap, chroot, binfmt_misc), Debian/Ubuntu x86-64, the package registries, and the
# repository's .venv (`make install`) as the x86 peer; it runs that `make install` when the .venv is missing.
set -euo pipefail

repo=${ARM64_REPO:-$(cd "$(dirname "$0")/.." && pwd)}  # ARM64_REPO: when run from a copy of this script
work=${ARM64_WORK:-/work/arm64}
jobs=2
suite=fast
suite_libs=pi5
stages="host root build wheels install models smoke greedy memory suite"
redo=""
suite_args=()
x86py="$repo/.venv/bin/python"  # the x86 peer: the README's `make install` (or --x86-python)
while [ $# -gt 0 ]; do
    case "$1" in
        --work) work=$2; shift 2 ;;
        --jobs) jobs=$2; shift 2 ;;
        --suite) suite=$2; shift 2 ;;
        --suite-libs) suite_libs=$2; shift 2 ;;
        --stages) stages=${2//,/ }; shift 2 ;;
        --redo) redo=${2//,/ }; shift 2 ;;
        --x86-python) x86py=$2; shift 2 ;;
        --ci) stages="host build models cgreedy"; suite=none; shift ;;
        --) shift; suite_args=("$@"); break ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$suite" in fast|full|smoke|none) ;; *) echo "error: --suite must be fast, full, smoke or none" >&2; exit 2 ;; esac
case "$suite_libs" in pi4|pi5) ;; *) echo "error: --suite-libs must be pi4 or pi5" >&2; exit 2 ;; esac
has_tools() {  # the host packages' commands (stage host installs what is missing)
    local t
    for t in aarch64-linux-gnu-gcc aarch64-linux-gnu-g++ qemu-aarch64-static debootstrap cmake make; do
        command -v "$t" > /dev/null || return 1
    done
}
needs_root=0
for s in root install smoke greedy memory suite; do [[ " $stages " != *" $s "* ]] || needs_root=1; done
[[ " $stages " != *" host "* ]] || has_tools || needs_root=1
[ "$needs_root" = 0 ] || [ "$(id -u)" = 0 ] || {
    echo "error: run as root (apt for the host packages; debootstrap, chroot and binfmt_misc for the arm64 root)" >&2; exit 2; }
[ "$(uname -m)" = x86_64 ] || { echo "error: this check runs on an x86-64 host (on a Pi, use make install)" >&2; exit 2; }

LLAMA_CPP_PYTHON=0.3.36
SUITE_RELEASE=bookworm
PY=cp311 PYVER=3.11            # bookworm's python3
root="$work/root"
logs="$work/logs"
stamps="$work/stamps"
mkdir -p "$work" "$logs" "$stamps"
work=$(cd "$work" && pwd)
NICE=(nice -n 10)

# The CPU that qemu-user models for each board, and the libraries built for it.
declare -A CPU=([pi4]=cortex-a72 [pi5]=cortex-a76)
declare -A MARCH=([pi4]="" [pi5]="armv8.2-a+dotprod+fp16")
# The comparisons with x86, QUANT|greedy answers required equal or reported|logit bound. Along x86's
# greedy answer each run's logits must stay within BOUND x the largest |logit| of x86's; measured:
# F16 1.8e-3 (7.7e-3 for the Pi 5 set, whose FP16 vector arithmetic sums F16 dot products in half
# precision), Q4_0 2.9e-2, as far as x86's own repacked and plain Q4_0 kernels are from each other
# (3.0e-2); a wrong kernel is off by the whole scale. Equal greedy answers follow from that only where
# no two candidates are closer than twice the distance: F16's are required, Q4_0's reported, because
# each CPU family quantizes the activations its own way (x86's 127/amax, NEON's 1/(amax/127), the
# repacked layouts) and a random model's near-ties settle differently.
VARIANTS=("F16|required|0.015625" "Q4_0|reported|0.0625")
# The ARM runs compared with x86, BOARD@CPU: each set on its board's CPU, and the Pi 4 set on a Pi 5's
# (one set for both boards); scripts/arm64_compare.py reads the same list.
ARM_RUNS=(pi4@cortex-a72 pi5@cortex-a76 pi4@cortex-a76)

say() { printf '%s\n' "$*" | tee -a "$logs/summary.txt"; }
stamp_ok() { [ -f "$stamps/$1" ] && [[ " $redo " != *" $1 "* ]]; }

run_stage() {  # run_stage NAME [stamped]: the stage's function, its output in logs/NAME.log, its time in times.tsv
    local name=$1 stamped=${2:-} start rc=0
    [[ " $stages " == *" $name "* ]] || return 0
    if [ -n "$stamped" ] && stamp_ok "$name"; then
        say "== $name: done before ($(cat "$stamps/$name")), skipped (--redo $name runs it again)"
        return 0
    fi
    say "== $name ($(date -u +%FT%TZ)), log: $logs/$name.log"
    start=$(date +%s)
    # In the background, so that `set -e` holds inside the stage (bash ignores it in a function
    # called as `f || ...`, and a failed command would not end the stage).
    "stage_$name" > "$logs/$name.log" 2>&1 &
    wait $! || rc=$?
    local secs=$(( $(date +%s) - start ))
    printf '%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$name" "$secs" "$rc" >> "$logs/times.tsv"
    if [ "$rc" != 0 ]; then
        say "== $name FAILED (exit $rc) after ${secs}s; the last lines of $logs/$name.log:"
        tail -n 25 "$logs/$name.log" | sed 's/^/   /' | tee -a "$logs/summary.txt"
        exit "$rc"
    fi
    [ -z "$stamped" ] || echo "${secs}s, $(date -u +%FT%TZ)" > "$stamps/$name"
    say "== $name: ok in ${secs}s"
    if [ -s "$logs/$name.result" ]; then sed 's/^/   /' "$logs/$name.result" | tee -a "$logs/summary.txt"; fi
}

# Runs a command in the arm64 root, in a mount namespace of its own (its /proc, /dev, /sys vanish with it).
in_root() {  # in_root [ENV=VALUE...] -- COMMAND...
    local envs=()
    while [ "$1" != -- ]; do envs+=("$1"); shift; done
    shift
    unshare --mount --fork --propagation private -- bash -c '
        r=$1; shift
        mount --rbind /dev "$r/dev"; mount -t proc proc "$r/proc"; mount --rbind /sys "$r/sys"
        mount -t tmpfs -o size=8g tmpfs "$r/tmp"
        exec chroot "$r" "$@"' _ "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "${envs[@]}" "$@"
}

# ---------------------------------------------------------------------------------------------------- stages
stage_host() {
    if ! has_tools || ! python3 -m venv --help > /dev/null; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q --no-install-recommends debootstrap qemu-user-static binfmt-support \
            gcc-aarch64-linux-gnu g++-aarch64-linux-gnu binutils-aarch64-linux-gnu cmake make python3 python3-venv \
            ca-certificates
    fi
    qemu-aarch64-static --version | head -1
    aarch64-linux-gnu-gcc --version | head -1
}

binfmt() {  # qemu-aarch64 registered with binfmt_misc: what chroot into the arm64 root needs
    mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 || true
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || systemctl restart systemd-binfmt 2>/dev/null || true
    grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 || { echo "qemu-aarch64 is not registered with binfmt_misc"; return 1; }
    cat /proc/sys/fs/binfmt_misc/qemu-aarch64
}

mirror() {  # the Debian mirror this host's apt uses (deb822 or one-line sources)
    local m
    m=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v -- '-security' | head -1)
    [ -n "$m" ] || m=$(grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}' | grep -v -- '-security' | head -1)
    [ -n "$m" ] || { echo "no Debian mirror found in /etc/apt/sources*" >&2; return 1; }
    echo "$m"
}

stage_root() {
    binfmt
    local m; m=$(mirror)
    if [ ! -x "$root/usr/bin/python3" ]; then
        rm -rf "$root"
        echo "-- first stage from $m"
        debootstrap --arch=arm64 --foreign --variant=minbase \
            --include=python3,python3-venv,libgomp1,ca-certificates,procps "$SUITE_RELEASE" "$root" "$m"
        cp /usr/bin/qemu-aarch64-static "$root/usr/bin/"   # for a binfmt entry without the F flag
        echo "-- second stage, under qemu"
        unshare --mount --fork --propagation private -- chroot "$root" /debootstrap/debootstrap --second-stage
    fi
    cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
    printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"
    in_root -- uname -m
    in_root -- python3 --version
}

sdist() {  # llama-cpp-python's sdist, unpacked in WORK/src
    local d="$work/src/llama_cpp_python-$LLAMA_CPP_PYTHON"
    if [ ! -f "$d/CMakeLists.txt" ]; then
        mkdir -p "$work/src"
        [ -f "$work/src/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz" ] || \
            "$(hostpy)" -m pip download --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_CPP_PYTHON" -d "$work/src" >&2
        tar -xzf "$work/src/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz" -C "$work/src"
    fi
    echo "$d"
}

hostpy() {  # a Python with pip on the host, for downloads and the wheel packing
    if [ ! -x "$work/hostvenv/bin/python" ]; then python3 -m venv "$work/hostvenv" >&2; fi
    echo "$work/hostvenv/bin/python"
}

stage_build() {
    local src; src=$(sdist)
    local board
    for board in pi4 pi5; do
        local b="$work/build/$board" flags=()
        [ -z "${MARCH[$board]}" ] || flags+=("-DGGML_CPU_ARM_ARCH=${MARCH[$board]}")
        echo "-- $board: configure (${MARCH[$board]:-no -march: armv8-a, the default of the compiler})"
        cmake -S "$src" -B "$b" -DCMAKE_BUILD_TYPE=Release \
            -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 \
            -DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ \
            -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
            -DLLAMA_BUILD_SERVER=OFF -DLLAMA_OPENSSL=OFF "${flags[@]}"
        grep -E 'ARM feature|HAVE_(DOTPROD|FP16_VECTOR|MATMUL_INT8|SVE)' "$b/CMakeCache.txt" || true
        # -march reaches only libggml-cpu (ggml's ARCH_FLAGS are private to that target): libllama,
        # libggml(-base) and libmtmd are the same for both boards, so pi5 builds ggml-cpu alone.
        local target=mtmd; [ "$board" = pi4 ] || target=ggml-cpu
        echo "-- $board: build $target (-j$jobs)"
        "${NICE[@]}" cmake --build "$b" --target "$target" -j "$jobs"
        pack "$board" "$src" "$b" "$work/build/pi4"
    done
    # The proof that pi4's libraries hold no ARMv8.2 instruction: no sdot/udot (dotprod), no fp16 arithmetic.
    for board in pi4 pi5; do
        local n lib="$work/pack/$board/llama_cpp/lib/libggml-cpu.so"
        [ -f "$lib" ] || { echo "$lib was not built"; return 1; }
        n=$(aarch64-linux-gnu-objdump -d "$lib" | grep -cE '\s(sdot|udot)\s' || true)
        echo "$board libggml-cpu.so: $n sdot/udot instructions"
        echo "$board: libggml-cpu.so has $n dotprod instructions" >> "$logs/build.result.tmp"
    done
    mv "$logs/build.result.tmp" "$logs/build.result"
    [ "$(grep -c '^pi4.* 0 dotprod' "$logs/build.result")" = 1 ] || { echo "pi4's libraries use dotprod"; return 1; }
}

pack() {  # pack BOARD SRC BUILD COMMON: llama-cpp-python's Python files + the libraries as a linux_aarch64 wheel
    local board=$1 src=$2 b=$3 common=$4 lib
    local stage="$work/pack/$board"
    rm -rf "$stage"; mkdir -p "$stage/llama_cpp/lib" "$work/wheels"
    (cd "$src" && tar -cf - --exclude=__pycache__ --exclude='lib' llama_cpp) | tar -xf - -C "$stage"
    for lib in llama ggml ggml-base ggml-cpu mtmd; do
        local from=$common; [ "$lib" != ggml-cpu ] || from=$b
        local f; f=$(find "$from" -name "lib$lib.so" | head -1)
        [ -n "$f" ] || { echo "lib$lib.so not built"; return 1; }
        local so; so=$(aarch64-linux-gnu-readelf -d "$f" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
        cp -L "$f" "$stage/llama_cpp/lib/lib$lib.so"
        [ -z "$so" ] || [ "$so" = "lib$lib.so" ] || cp -L "$f" "$stage/llama_cpp/lib/$so"
    done
    aarch64-linux-gnu-strip --strip-unneeded "$stage"/llama_cpp/lib/*.so*
    "$(hostpy)" - "$stage" "$work/wheels" "$LLAMA_CPP_PYTHON+$board" "${MARCH[$board]:-armv8-a}" <<'EOF'
import base64, hashlib, pathlib, sys, zipfile
stage, out, version, march = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3], sys.argv[4]
name = f"llama_cpp_python-{version}"
meta = {
    f"{name}.dist-info/METADATA": (
        "Metadata-Version: 2.1\nName: llama_cpp_python\nVersion: " + version + "\n"
        f"Summary: llama-cpp-python's Python files with llama.cpp cross-built for aarch64 (-march={march})\n"
        "Requires-Python: >=3.8\nRequires-Dist: typing-extensions>=4.5.0\nRequires-Dist: numpy>=1.20.0\n"
        "Requires-Dist: diskcache>=5.6.1\nRequires-Dist: jinja2>=2.11.3\n"),
    f"{name}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: lfm2-edge arm64-check\nRoot-Is-Purelib: false\nTag: py3-none-linux_aarch64\n",
}
for old in out.glob(f"llama_cpp_python-{version}-*.whl"):
    old.unlink()
whl = out / f"{name}-py3-none-linux_aarch64.whl"
record = []
with zipfile.ZipFile(whl, "w", zipfile.ZIP_DEFLATED) as z:
    for p in sorted(stage.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            arc = p.relative_to(stage).as_posix()
            info = zipfile.ZipInfo(arc, (2020, 1, 1, 0, 0, 0))
            info.external_attr = (0o755 if ".so" in p.name else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{arc},sha256={digest},{len(data)}")
    for arc, text in meta.items():
        z.writestr(arc, text)
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{arc},sha256={digest},{len(text.encode())}")
    record.append(f"{name}.dist-info/RECORD,,")
    z.writestr(f"{name}.dist-info/RECORD", "\n".join(record) + "\n")
print(whl, f"{whl.stat().st_size / 2**20:.1f} MiB")
EOF
}

stage_wheels() {
    local py; py=$(hostpy)
    "$py" -m pip install -q --upgrade pip
    mkdir -p "$work/pywheels"
    "$py" - "$repo/pyproject.toml" > "$work/pywheels/requirements.txt" <<'EOF'
import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
deps = [d for d in p["dependencies"] + p["optional-dependencies"]["dev"] if not d.startswith("llama-cpp-python")]
# the dependencies of llama-cpp-python (its wheel comes from the build stage), and the build backend
deps += ["typing-extensions>=4.5.0", "diskcache>=5.6.1", "setuptools>=68", "wheel", "pip"]
print("\n".join(deps))
EOF
    local plats=(--platform linux_aarch64 --platform manylinux2014_aarch64) v
    for v in $(seq 17 36); do plats+=(--platform "manylinux_2_${v}_aarch64"); done
    # PIP_FIND_LINKS / the pip.conf of this host may hold x86 wheels: the index alone, for aarch64
    PIP_FIND_LINKS="" PIP_CONFIG_FILE=/dev/null "$py" -m pip download -q --only-binary=:all: "${plats[@]}" \
        --implementation cp --python-version "$PYVER" --abi "$PY" --abi abi3 --abi none \
        -d "$work/pywheels" -r "$work/pywheels/requirements.txt"
    echo "$(ls "$work/pywheels"/*.whl | wc -l) aarch64/any wheels in $work/pywheels" > "$logs/wheels.result"
}

stage_install() {
    # This working tree (tracked and untracked files, not the ignored ones) into /src/lfm2-edge.
    rm -rf "$root/src/lfm2-edge"; mkdir -p "$root/src/lfm2-edge" "$root/wheels"
    (cd "$repo" && git ls-files -co --exclude-standard -z | xargs -0 -I{} sh -c '[ -e "{}" ] && printf "%s\0" "{}"' \
        | tar --null -T - -cf -) | tar -xf - -C "$root/src/lfm2-edge"
    rsync -a --delete "$work/pywheels/" "$root/wheels/py/" 2>/dev/null || { rm -rf "$root/wheels/py"; cp -a "$work/pywheels" "$root/wheels/py"; }
    cp "$work"/wheels/*.whl "$root/wheels/" 2>/dev/null || true
    cp "$work/pywheels/requirements.txt" "$root/wheels/requirements.txt"
    local board
    for board in pi4 pi5; do
        local v=/opt/lfm2-$board pip=(in_root QEMU_CPU="${CPU[$board]}" PIP_DISABLE_PIP_VERSION_CHECK=1 --)
        if [ ! -x "$root$v/bin/pytest" ] || [[ " $redo " == *" install "* ]]; then
            echo "-- $board: $v, the dependencies from aarch64 wheels"
            rm -rf "${root:?}$v"
            "${pip[@]}" python3 -m venv "$v"
            "${pip[@]}" "$v/bin/pip" install -q --no-index --find-links /wheels/py --upgrade pip
            "${pip[@]}" "$v/bin/pip" install -q --no-index --find-links /wheels/py -r /wheels/requirements.txt
        fi
        local whl; whl=$(cd "$work/wheels" && ls llama_cpp_python-*+"$board"-*.whl 2>/dev/null || true)
        [ -n "$whl" ] || { echo "no $board wheel in $work/wheels: run the build stage"; return 1; }
        echo "-- $board: $whl and lfm2-edge from /src/lfm2-edge"
        "${pip[@]}" "$v/bin/pip" install -q --no-index --force-reinstall --no-deps "/wheels/$whl"
        "${pip[@]}" "$v/bin/pip" install -q --no-index --find-links /wheels/py --no-deps -e /src/lfm2-edge
        "${pip[@]}" "$v/bin/pip" check
    done
}

stage_models() {
    [ -x "$x86py" ] || make -C "$repo" install
    mkdir -p "$root/models"
    if [ ! -f "$root/models/tiny/model-Q4_0.gguf" ]; then
        PYTHONPATH="$repo" "$x86py" -m lfm2_edge.testing --shape tiny --out "$root/models/tiny" --quant Q4_0
    fi
    ls -la "$root/models/tiny"
    # a picture with structure (the vision tower sees more than a flat colour)
    PYTHONPATH="$repo" "$x86py" - "$root/models/picture.png" <<'EOF'
import sys
from PIL import Image, ImageDraw
im = Image.new("RGB", (320, 240), (30, 90, 160))
d = ImageDraw.Draw(im)
d.ellipse((60, 40, 200, 180), fill=(230, 200, 40))
d.rectangle((180, 120, 300, 220), fill=(200, 40, 60))
im.save(sys.argv[1])
EOF
}

# llama.cpp's greedy loop, x86 against aarch64, with no arm64 root: the stage that fits CI.
stage_cgreedy() {
    local src; src=$(sdist)
    local out="$logs/cgreedy" inc=() x86lib failed=0; mkdir -p "$out"; : > "$logs/cgreedy.result"
    inc=(-I"$src/vendor/llama.cpp/include" -I"$src/vendor/llama.cpp/ggml/include" -I"$src/vendor/llama.cpp/tools/mtmd")
    x86lib=$("$x86py" -c 'import llama_cpp, pathlib; print(pathlib.Path(llama_cpp.__file__).parent / "lib")')
    local libs=(-lmtmd -lllama -lggml -lggml-base)
    gcc -O2 -Wall -o "$out/greedy-x86" "$repo/scripts/arm64_greedy.c" "${inc[@]}" -L"$x86lib" "${libs[@]}" -Wl,-rpath,"$x86lib"
    aarch64-linux-gnu-gcc -O2 -Wall -o "$out/greedy-aarch64" "$repo/scripts/arm64_greedy.c" "${inc[@]}" \
        -L"$work/pack/pi4/llama_cpp/lib" "${libs[@]}"
    local m=$root/models/tiny args variant q need bound where ids
    for variant in "${VARIANTS[@]}"; do
        IFS='|' read -r q need bound <<< "$variant"
        args=("$m/model-$q.gguf" "$m/mmproj-F16.gguf" "$root/models/picture.png" "Describe this picture." 32)
        echo "-- $q on x86"; "$out/greedy-x86" "${args[@]}" | tee "$out/$q-x86.txt"
        for where in "${ARM_RUNS[@]}"; do
            echo "-- $q on $where"; arm "${where%@*}" "${where#*@}" "${args[@]}" | tee "$out/$q-$where.txt"
        done
        "$x86py" "$repo/scripts/arm64_compare.py" ids "$out" "$q llama.cpp greedy" "$q" "$need" \
            >> "$logs/cgreedy.result" || failed=1
        # every run's logits along x86's answer
        ids=$(sed -n 's/^ids://p' "$out/$q-x86.txt")
        "$out/greedy-x86" --follow "$ids" "${args[@]}" > "$out/$q-follow-x86.txt"
        for where in "${ARM_RUNS[@]}"; do
            echo "-- $q on $where along x86's answer"
            arm "${where%@*}" "${where#*@}" --follow "$ids" "${args[@]}" > "$out/$q-follow-$where.txt"
        done
        "$x86py" "$repo/scripts/arm64_compare.py" follow "$out" "$q llama.cpp logits along x86's answer" "$q" "$bound" \
            >> "$logs/cgreedy.result" || failed=1
    done
    # The Pi 5 set on a Pi 4's CPU: llama.cpp's loop dies of SIGILL; lfm2-edge's check, given that set's
    # features and the Cortex-A72's auxv words (both read under qemu), refuses first.
    local rc=0
    arm pi5 cortex-a72 "$m/model-Q4_0.gguf" "$m/mmproj-F16.gguf" "$root/models/picture.png" "Hi" 2 \
        > "$out/pi5-on-a72.txt" 2>&1 || rc=$?
    arm pi5 cortex-a72 --probe > "$out/pi5-on-a72-probe.txt"
    cat "$out/pi5-on-a72-probe.txt"
    PYTHONPATH="$repo" "$x86py" - "$out/pi5-on-a72-probe.txt" "$rc" >> "$logs/cgreedy.result" <<'EOF' || failed=1
import sys
from lfm2_edge._llama import cpu
text, rc = open(sys.argv[1]).read(), int(sys.argv[2])
info = text.split("system_info:")[1].split("\n")[0]
hwcap = tuple(int(x) for x in text.split("hwcap:")[1].split())
result = cpu.check(system_info=info, machine="aarch64", hwcaps=hwcap)
print(f"pi5 set on cortex-a72: llama.cpp's loop exits {rc}{' (SIGILL)' if rc == 132 else ''}; "
      f"lfm2-edge's check: built for {' '.join(result.built_for)}, missing {' '.join(result.missing) or 'nothing'}")
sys.exit(0 if rc != 0 and "DOTPROD" in result.missing else 1)
EOF
    return $failed
}

arm() {  # arm BOARD CPU ARGS...: the aarch64 greedy loop on BOARD's libraries, on the CPU that qemu models
    local board=$1 cpu=$2; shift 2
    QEMU_CPU=$cpu qemu-aarch64-static -L /usr/aarch64-linux-gnu \
        -E LD_LIBRARY_PATH="$work/pack/$board/llama_cpp/lib" "$logs/cgreedy/greedy-aarch64" "$@"
}

lfm() {  # lfm BOARD CPU ARGS...: lfm2-edge from BOARD's venv in the root on the CPU that qemu models
    local board=$1 cpu=$2; shift 2
    in_root QEMU_CPU="$cpu" -- "/opt/lfm2-$board/bin/lfm2-edge" "$@"
}

stage_smoke() {
    local board out="$logs/smoke"; mkdir -p "$out"; : > "$logs/smoke.result"
    for board in pi4 pi5; do
        local cpu=${CPU[$board]}
        echo "-- $board libraries on $cpu"
        lfm "$board" "$cpu" --version | tee "$out/$board-version.txt"
        lfm "$board" "$cpu" info | tee "$out/$board-info.txt"
        lfm "$board" "$cpu" info --json > "$out/$board-info.json"
        lfm "$board" "$cpu" doctor | tee "$out/$board-doctor.txt"
        lfm "$board" "$cpu" doctor --json > "$out/$board-doctor.json"
        echo "$board on $cpu: --version, info, info --json, doctor, doctor --json exit 0" >> "$logs/smoke.result"
    done
}

chat() {  # chat WHERE QUANT: one greedy answer as JSON on stdout
    local where=$1 q=$2
    local args=(chat /models/tiny/model-"$q".gguf --mmproj /models/tiny/mmproj-F16.gguf -i /models/picture.png
                -p "Describe this picture." --temperature 0 --max-tokens 32 --seed 0 --json)
    case "$where" in
        x86) (cd "$root" && PYTHONPATH="$repo" "$x86py" -m lfm2_edge "${args[@]/#\/models/$root/models}") ;;
        *) local board=${where%@*} cpu=${where#*@}; lfm "$board" "$cpu" "${args[@]}" ;;
    esac
}

stage_greedy() {
    local out="$logs/greedy" q where failed=0; mkdir -p "$out"; : > "$logs/greedy.result"
    local variant need
    for variant in "${VARIANTS[@]}"; do
        IFS='|' read -r q need _ <<< "$variant"
        for where in x86 "${ARM_RUNS[@]}"; do
            echo "-- $q on $where"
            chat "$where" "$q" > "$out/$q-$where.json"
            "$x86py" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(repr(d["text"]), d["usage"])' "$out/$q-$where.json"
        done
        "$x86py" "$repo/scripts/arm64_compare.py" chat "$out" "$q greedy" "$q" "$need" \
            >> "$logs/greedy.result" || failed=1
    done
    # doctor's repacked copy against llama.cpp's own: its CPU_REPACK buffer (none on a Pi 4's CPU)
    local board
    for board in pi4 pi5; do
        local cpu=${CPU[$board]}
        lfm "$board" "$cpu" chat /models/tiny/model-Q4_0.gguf --mmproj /models/tiny/mmproj-F16.gguf -i /models/picture.png \
            -p "Hi" --temperature 0 --max-tokens 2 -vv > /dev/null 2> "$out/$board-Q4_0-llama.log"
        lfm "$board" "$cpu" doctor /models/tiny/model-Q4_0.gguf --mmproj /models/tiny/mmproj-F16.gguf --json \
            > "$out/$board-Q4_0-doctor.json"
        "$x86py" - "$board" "$cpu" "$out/$board-Q4_0-llama.log" "$out/$board-Q4_0-doctor.json" >> "$logs/greedy.result" <<'EOF' || failed=1
import json, re, sys
board, cpu, log, doc = sys.argv[1:]
sizes = [float(m) for m in re.findall(r"CPU_REPACK model buffer size = +([0-9.]+) MiB", open(log).read())]
llama = sum(sizes)
est = json.load(open(doc))["model"]["estimate_mib"]["repacked"]
ok = (llama == 0 and est == 0) or (llama > 0 and abs(est - llama) <= 0.2 * llama + 0.05)
print(f"repack, {board} libraries on {cpu}: llama.cpp's CPU_REPACK buffer {llama:g} MiB, doctor {est:g} MiB: {'ok' if ok else 'WRONG'}")
sys.exit(0 if ok else 1)
EOF
    done
    # Pi 5 libraries on a Pi 4's CPU: lfm2-edge must refuse with one line and exit 2 before llama.cpp runs.
    local rc=0
    chat pi5@cortex-a72 Q4_0 > "$out/pi5-on-a72.out" 2> "$out/pi5-on-a72.err" || rc=$?
    cat "$out/pi5-on-a72.err"
    local lines; lines=$(grep -c . "$out/pi5-on-a72.err" || true)
    if [ "$rc" = 2 ] && [ "$lines" = 1 ]; then
        echo "pi5 libraries on cortex-a72: exit 2, one line: $(cat "$out/pi5-on-a72.err")" >> "$logs/greedy.result"
    else
        echo "pi5 libraries on cortex-a72: exit $rc, $lines lines on stderr (want exit 2, one line)" >> "$logs/greedy.result"
        failed=1
    fi
    return $failed
}

# doctor's whole estimate for a 450M-shaped Q4_0 model against llama.cpp's own buffers (weights mapped
# and repacked, KV cache, compute, the projector's): RSS under qemu-user holds the emulator, these do not.
stage_memory() {
    [ -f "$root/models/450m/model-Q4_0.gguf" ] || \
        PYTHONPATH="$repo" "$x86py" -m lfm2_edge.testing --shape lfm2-vl-450m --out "$root/models/450m" --quant Q4_0
    rm -f "$root/models/450m/model-F16.gguf"  # 0.7 GB the check does not use
    local board out="$logs/memory"; mkdir -p "$out"; : > "$logs/memory.result"
    for board in pi4 pi5; do
        local cpu=${CPU[$board]} m=(/models/450m/model-Q4_0.gguf --mmproj /models/450m/mmproj-F16.gguf --ctx 4096)
        lfm "$board" "$cpu" chat "${m[@]}" -i /models/picture.png -p "Hi" --temperature 0 --max-tokens 1 -vv \
            > /dev/null 2> "$out/$board-llama.log"
        lfm "$board" "$cpu" doctor "${m[@]}" --json > "$out/$board-doctor.json"
        "$x86py" - "$board" "$cpu" "$out/$board-llama.log" "$out/$board-doctor.json" >> "$logs/memory.result" <<'EOF'
import json, re, sys
board, cpu, log, doc = sys.argv[1:]
text = open(log).read()
buffers = [float(x) for x in re.findall(r"buffer size = +([0-9.]+) MiB", text)]  # llama.cpp's, mtmd's compute
clip = sum(int(x) for x in re.findall(r"clip_model_loader: tensor\[\d+\]:.*?tensor_size=(\d+)", text)) / 2**20
measured = sum(buffers) + clip
est = json.load(open(doc))["model"]["estimate_mib"]
model = est["total"] - est["runtime"]  # the interpreter and libraries are no llama.cpp buffer
err = 100 * (model - measured) / measured
print(f"450M-shaped Q4_0, {board} libraries on {cpu}: doctor {model:.0f} MiB (repacked {est['repacked']:.0f}), "
      f"llama.cpp's buffers {sum(buffers):.0f} MiB + projector tensors {clip:.0f} MiB = {measured:.0f} MiB: {err:+.1f}%")
sys.exit(0 if abs(err) < 20 else 1)
EOF
    done
}

stage_suite() {
    [ "$suite" != none ] || { echo "skipped (--suite none)" > "$logs/suite.result"; return 0; }
    local v=/opt/lfm2-$suite_libs sel=()
    case "$suite" in
        fast) sel=(-m "not slow") ;;
        full) sel=() ;;
        # a few minutes: the model, images, doctor and the CLI on the real pipeline
        smoke) sel=(-m "not slow" tests/local/test_model.py tests/chat/test_images.py tests/local/test_arm.py tests/cli/test_cli.py) ;;
    esac
    local rc=0
    in_root QEMU_CPU="${CPU[$suite_libs]}" -- /bin/sh -c 'cd /src/lfm2-edge && exec "$0" "$@"' \
        "$v/bin/pytest" -q -p no:cacheprovider --junitxml=/root/suite-$suite-$suite_libs.xml "${sel[@]}" "${suite_args[@]}" || rc=$?
    local last; last=$(tail -n 1 "$logs/suite.log")
    echo "suite ($suite, $suite_libs libraries on ${CPU[$suite_libs]}): $last" > "$logs/suite.result"
    return $rc
}

echo >> "$logs/summary.txt"
say "arm64 check of $repo ($(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?')), work $work, stages: $stages"
total_start=$(date +%s)
run_stage host stamped
run_stage root stamped
run_stage build stamped
run_stage wheels stamped
run_stage install
run_stage models
run_stage cgreedy
run_stage smoke
run_stage greedy
run_stage memory
run_stage suite
say "== all stages ok in $(( $(date +%s) - total_start ))s; per stage: $logs/times.tsv"
