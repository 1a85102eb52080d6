#!/bin/sh
# xenspin's rootfs steps after mmdebstrap has installed the packages, run as root of the
# build account's user namespace (mmdebstrap --unshare-helper: the mapping the tree was made with):
#   sh intree.sh TREE WORK
# WORK/params sets the rest (written by builder/rootfs.py). Every command that comes
# from the tree (its tar, sh, update-rc.d, mkinitramfs, a spin's hooks) runs in `box`:
# bubblewrap with the tree as /, no network, a private /tmp and a cleared environment,
# so a symlink in the tree resolves inside the tree and nothing reaches the host. Only
# the host's own mksquashfs reads the tree from outside, and it follows no symlink.
set -eu
tree=$1
work=$2
. "$work/params"
out=$work/out
logs=$work/logs

box() {
    # box [bwrap options] -- COMMAND...: COMMAND in the tree. unshare gives bwrap a /proc
    # of this pid namespace; no user namespace of its own, so the tree's owners stay.
    net=--unshare-net
    if [ "$1" = --share-net ]; then
        net=
        shift
    fi
    unshare --mount --mount-proc -- bwrap --bind "$tree" / $net --unshare-ipc --unshare-pid \
        --unshare-uts --unshare-cgroup-try --die-with-parent --new-session --hostname xenspin \
        --dev /dev --proc /proc --tmpfs /tmp --clearenv \
        --setenv PATH /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --setenv LC_ALL C.UTF-8 --setenv SOURCE_DATE_EPOCH "$epoch" --setenv HOME /root \
        --setenv TMPDIR /tmp --chdir / "$@"
}

# 1. The repository's mount point directories the automount hook left: up to the first
#    one a package owns (the store may live in /var/tmp or /tmp) or that holds anything.
d=$repo
while [ "${d%/*}" != "" ]; do
    if box -- sh -c 'cat /var/lib/dpkg/info/*.list | grep -qxF -- "$1"' sh "$d"; then break; fi
    box -- rmdir "$d" 2>/dev/null || break
    d=${d%/*}
done

# 2. xenspin's files (dom0 setup, branding) and the overlays: one tar xenspin wrote,
#    unpacked by the tree's tar so that a path through a symlink stays in the tree.
box --ro-bind "$work/layer.tar" /tmp/layer.tar -- \
    tar -x -f /tmp/layer.tar -C / --numeric-owner --keep-directory-symlink >>"$logs/02-dom0.log" 2>&1
box -- sh -c 'if [ -e /etc/init.d/xen ]; then update-rc.d xen defaults; fi' >>"$logs/02-dom0.log" 2>&1

# 3. The spin's hooks, in order, each with the tree as / and "/" as $1.
for hook in "$work"/hooks/*; do
    [ -f "$hook" ] || continue
    name=${hook##*/}
    if [ -x "$hook" ]; then run=/tmp/xenspin-hook; else run="/bin/sh /tmp/xenspin-hook"; fi
    # shellcheck disable=SC2086 # $hooknet is empty or one option; $run is one or two words
    if ! box $hooknet --ro-bind "$hook" /tmp/xenspin-hook -- $run / >"$logs/hook-$name.log" 2>&1; then
        echo "$name" >"$work/failed-hook"
        exit 1
    fi
done

# 4. Nothing of the build host or of this build: see rootfs.SCRUB.
box -- sh -c "$scrub" >>"$logs/02-dom0.log" 2>&1

# 5. boot/ for the ISO, then the installed disk's initrd (live-boot's initramfs parts set aside).
box --bind "$out/boot" /tmp/out -- sh -c "$export_boot" >"$logs/03-boot.log" 2>&1
box --bind "$out/initrd" /tmp/out -- sh -c "$disk_initrd" >"$logs/04-disk-initrd.log" 2>&1

# 6. What packages.json records: dpkg's status and every setuid or setgid file.
box -- cat /var/lib/dpkg/status >"$out/dpkg-status"
box -- find / -xdev -type f -perm /6000 -printf '%m %u %g %p\n' >"$out/setuid"
box -- sh -c 'for l in /var/lib/dpkg/info/*.list; do n=${l##*/}; sed "s|^|${n%.list} |" "$l"; done' >"$out/owners"

# 7. The squashfs: entries sorted, times clamped (SOURCE_DATE_EPOCH), this filesystem only
#    (mmdebstrap's /proc, /sys and /dev mounts are not part of the image).
SOURCE_DATE_EPOCH=$epoch mksquashfs "$tree" "$out/rootfs.squashfs" -noappend -reproducible \
    -one-file-system -comp "$compression" $level -no-progress >"$logs/05-mksquashfs.log" 2>&1
