#!/usr/bin/env bash
# Install, upgrade or remove tbftd as a systemd service. Run from a checkout: sudo deploy/install.sh
# Idempotent: a second run with the same source changes nothing but the reinstalled package.
# See deploy/README.md, and --help below.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: sudo deploy/install.sh [OPTIONS]
       sudo deploy/install.sh --uninstall [--purge]

Installs tbftd: the system user (sysusers.d), a virtual environment per version under
/opt/tbftd/releases with /opt/tbftd/venv pointing at the current one, the package, the config
/etc/tbftd/tbftd.toml (written from `tbftd config example` only if absent: yours is kept), the
systemd units and the udev rule; enables the units and (re)starts tbftd.

Options:
  --source PATH     what pip installs: a checkout or a wheel (default: the checkout holding
                    this script)
  --operator USER   add USER to the tbftd group (reads the data and the config); repeatable
  --no-start        enable the units but do not (re)start tbftd
  --no-venv         do not create a virtual environment or install the package; lay out the rest
  --tbftd PATH      the tbftd command that renders the example config (default: the new
                    virtual environment's; needed with --no-venv)
  --root DIR        install into the tree DIR instead of /: files only. No user is created, no
                    service is started or reloaded, nothing outside DIR is touched; units are
                    enabled by creating their symlinks in DIR; files keep the caller's owner.
                    A virtual environment made under --root has DIR in its script paths: to
                    build an image, run this script inside it (chroot) instead, or use --no-venv.
  --uninstall       stop and remove the units, the udev rule and /opt/tbftd; keeps the data
                    (/var/lib/tbftd), the config (/etc/tbftd) and the user
  --purge           with --uninstall: also delete /var/lib/tbftd, /etc/tbftd and the user
  -h, --help        this help
EOF
}

ROOT=""
SOURCE=""
TBFTD=""
RELEASE=""
MAKE_VENV=1
START=1
UNINSTALL=0
PURGE=0
OPERATORS=()
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

while [[ $# -gt 0 ]]; do
    case "$1" in
        --root) ROOT="${2:?--root needs a directory}"; shift 2 ;;
        --source) SOURCE="${2:?--source needs a path}"; shift 2 ;;
        --tbftd) TBFTD="${2:?--tbftd needs a path}"; shift 2 ;;
        --operator) OPERATORS+=("${2:?--operator needs a user name}"); shift 2 ;;
        --no-venv) MAKE_VENV=0; shift ;;
        --no-start) START=0; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        --purge) PURGE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [[ $UNINSTALL -eq 0 && ! -f "$HERE/tbftd.service" ]]; then
    echo "install.sh: run the install.sh of a checkout (deploy/install.sh), not $HERE/install.sh" >&2; exit 2
fi
if [[ -n "$ROOT" ]]; then
    mkdir -p "$ROOT"
    ROOT="$(cd "$ROOT" && pwd)"
    [[ "$ROOT" != "/" ]] || ROOT=""
fi
REAL=1  # acting on the running system (not a --root tree)
[[ -z "$ROOT" ]] || REAL=0
if [[ $PURGE -eq 1 && $UNINSTALL -eq 0 ]]; then
    echo "install.sh: --purge goes with --uninstall" >&2; exit 2
fi
if [[ $REAL -eq 1 && $EUID -ne 0 ]]; then
    echo "install.sh: run as root (sudo), or give --root DIR" >&2; exit 1
fi

OPT=/opt/tbftd
UNITS=(tbftd.service tbftd-rfcomm.service)
UNIT_DIR=/etc/systemd/system
UDEV_RULE=/etc/udev/rules.d/99-tbftd-meter.rules
SYSUSERS=/etc/sysusers.d/tbftd.conf
CONFIG_DIR=/etc/tbftd
STATE_DIR=/var/lib/tbftd

say() { echo "install.sh: $*"; }

# Copy only when the content or mode differs, so a second run leaves every file untouched.
put() {  # put MODE SOURCE DEST
    install -C -D -m "$1" "$2" "$ROOT$3"
}

# Point symlink DEST at TARGET, atomically, unless it already does.
link() {  # link TARGET DEST
    if [[ "$(readlink "$ROOT$2" 2>/dev/null || true)" != "$1" ]]; then
        mkdir -p "$(dirname "$ROOT$2")"
        ln -sfn "$1" "$ROOT$2.new"
        mv -T "$ROOT$2.new" "$ROOT$2"
    fi
}

uninstall() {
    if [[ $REAL -eq 1 ]]; then
        systemctl disable --now "${UNITS[@]}" 2>/dev/null || true
    fi
    for unit in "${UNITS[@]}"; do
        rm -f "$ROOT$UNIT_DIR/multi-user.target.wants/$unit" "$ROOT$UNIT_DIR/$unit"
    done
    rm -f "$ROOT$UDEV_RULE"
    rm -rf "$ROOT$OPT"
    if [[ $REAL -eq 1 ]]; then
        systemctl daemon-reload
        udevadm control --reload-rules 2>/dev/null || true
    fi
    if [[ $PURGE -eq 1 ]]; then
        rm -rf "$ROOT$STATE_DIR" "$ROOT$CONFIG_DIR"
        rm -f "$ROOT$SYSUSERS"
        if [[ $REAL -eq 1 ]] && getent passwd tbftd >/dev/null; then
            userdel tbftd
            ! getent group tbftd >/dev/null || groupdel tbftd
        fi
        say "removed tbftd, its data, its config and its user"
    else
        say "removed tbftd; kept $STATE_DIR (data), $CONFIG_DIR (config) and the user tbftd (--purge deletes them)"
    fi
}

source_version() {  # the version of $SOURCE: a wheel's file name, or a checkout's pyproject.toml
    if [[ -f "$SOURCE" ]]; then
        basename "$SOURCE" | sed -n 's/^tbftd-\([^-]*\)-.*\.whl$/\1/p'
    else
        python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
            "$SOURCE/pyproject.toml"
    fi
}

install_package() {  # sets RELEASE, and TBFTD to the new release's command
    [[ -n "$SOURCE" ]] || SOURCE="$(dirname "$HERE")"
    if [[ ! -f "$SOURCE" && ! -f "$SOURCE/pyproject.toml" ]]; then
        echo "install.sh: $SOURCE is neither a wheel nor a checkout of tbftd (give --source)" >&2; exit 1
    fi
    local version release
    version="$(source_version)"
    [[ -n "$version" ]] || { echo "install.sh: cannot tell the version of $SOURCE" >&2; exit 1; }
    release="$OPT/releases/$version"
    if [[ ! -x "$ROOT$release/bin/pip" ]]; then
        say "creating the virtual environment $ROOT$release"
        python3 -m venv "$ROOT$release" || {
            rm -rf "$ROOT$release"
            echo "install.sh: python3 cannot make a virtual environment: sudo apt install python3-venv" >&2; exit 1; }
        "$ROOT$release/bin/pip" install --quiet --upgrade pip
    fi
    say "installing $SOURCE into $ROOT$release (torch is large: the first time takes a while)"
    "$ROOT$release/bin/pip" install --upgrade "$SOURCE"
    RELEASE="releases/$version"
    [[ -n "$TBFTD" ]] || TBFTD="$ROOT$release/bin/tbftd"
}

install_files() {
    local tmp
    tmp="$(mktemp -d)"
    "$TBFTD" config example >"$tmp/tbftd.toml.example"

    # A reference copy for operators and upgrades (diff your config against the new example).
    put 0644 "$HERE/README.md" "$OPT/deploy/README.md"
    put 0755 "$HERE/install.sh" "$OPT/deploy/install.sh"
    put 0644 "$tmp/tbftd.toml.example" "$OPT/deploy/tbftd.toml.example"

    put 0644 "$HERE/sysusers.d/tbftd.conf" "$SYSUSERS"
    put 0644 "$HERE/udev/99-tbftd-meter.rules" "$UDEV_RULE"
    for unit in "${UNITS[@]}"; do
        put 0644 "$HERE/$unit" "$UNIT_DIR/$unit"
    done

    # /etc/tbftd: the config may hold api_token, so root writes it and only group tbftd reads it.
    install -d -m 0755 "$ROOT$CONFIG_DIR"
    put 0644 "$HERE/rfcomm.conf.example" "$CONFIG_DIR/rfcomm.conf.example"
    if [[ ! -e "$ROOT$CONFIG_DIR/tbftd.toml" ]]; then
        put 0640 "$tmp/tbftd.toml.example" "$CONFIG_DIR/tbftd.toml"
        say "wrote $ROOT$CONFIG_DIR/tbftd.toml (every setting commented out at its default)"
    else
        say "kept $ROOT$CONFIG_DIR/tbftd.toml; the new example is $ROOT$OPT/deploy/tbftd.toml.example"
    fi
    rm -rf "$tmp"
}

create_user() {
    if command -v systemd-sysusers >/dev/null; then
        systemd-sysusers "$SYSUSERS"
    elif ! getent passwd tbftd >/dev/null; then  # the same as the sysusers.d file says
        useradd --system --user-group --home-dir "$STATE_DIR" --shell /usr/sbin/nologin \
            --comment "tbftd personalization daemon" tbftd
    fi
    id -nG tbftd | tr ' ' '\n' | grep -qx dialout || usermod -aG dialout tbftd
    chgrp tbftd "$CONFIG_DIR/tbftd.toml"  # root writes it, the daemon and the operators read it
    for operator in "${OPERATORS[@]}"; do
        usermod -aG tbftd "$operator"
        say "added $operator to the group tbftd (takes effect at their next login)"
    done
}

enable_units() {
    # Switch to the new release only now, right before the restart: the running daemon spawns its
    # trainer from /opt/tbftd/venv, which must not change under it for long.
    [[ -z "$RELEASE" ]] || link "$RELEASE" "$OPT/venv"  # relative: works wherever the tree is mounted
    if [[ $REAL -eq 1 ]]; then
        systemctl daemon-reload
        systemctl enable --quiet "${UNITS[@]}"
        udevadm control --reload-rules
        udevadm trigger --subsystem-match=tty --action=add || true
        if [[ $START -eq 1 ]]; then
            systemctl restart tbftd.service
            say "tbftd (re)started: systemctl status tbftd; journalctl -u tbftd -f"
        fi
    else
        # What `systemctl enable` does, for a tree that is not running: the [Install] symlinks.
        for unit in "${UNITS[@]}"; do
            link "$UNIT_DIR/$unit" "$UNIT_DIR/multi-user.target.wants/$unit"
        done
    fi
}

if [[ $UNINSTALL -eq 1 ]]; then
    uninstall
    exit 0
fi
if [[ $REAL -eq 0 && ${#OPERATORS[@]} -gt 0 ]]; then
    echo "install.sh: --operator changes users: not with --root" >&2; exit 2
fi
if [[ $MAKE_VENV -eq 1 ]]; then
    install_package
elif [[ -z "$TBFTD" ]]; then
    echo "install.sh: --no-venv needs --tbftd PATH (a tbftd command to render the example config)" >&2; exit 2
fi
install_files
if [[ $REAL -eq 1 ]]; then
    create_user
fi
enable_units
say "done${ROOT:+ (in $ROOT)}"
