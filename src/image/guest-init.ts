/**
 * The two scripts that start a guest. The initramfs `/init` (busybox) loads the virtio
 * modules, mounts the root disk and hands over; `/sbin/prewarm-init` in the root filesystem
 * is PID 1 of the real system: it mounts what commands need, brings up the network and keeps
 * the guest agent running. Nothing else runs in the guest.
 */

export function initramfsInit(moduleOrder: string[]): string {
  return `#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in ${moduleOrder.join(' ')}; do
  insmod /lib/modules/$m.ko || echo "prewarm-initramfs: could not load $m"
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 1000 ]; do usleep 10000; i=$((i+1)); done
if ! mount -t ext4 -o rw,noatime /dev/vda /newroot; then
  echo "prewarm-initramfs: cannot mount the root disk /dev/vda"
  poweroff -f
fi
mount --move /dev /newroot/dev
umount /proc /sys
exec switch_root /newroot /sbin/prewarm-init
`;
}

/** PID 1 of the guest. The NIC always exists (restores need the same devices); the host
 * decides whether it reaches anything. */
export const GUEST_INIT = `#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
echo "+memory +pids" > /sys/fs/cgroup/cgroup.subtree_control
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs tmpfs /run
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
hostname prewarm
ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
  ip link set eth0 up
  ip addr add 10.0.2.15/24 dev eth0
  ip route add default via 10.0.2.2
fi
# A disk overlay larger than the filesystem (a bigger tier) grows it online.
resize2fs /dev/vda >/dev/null 2>&1 &
port=
for p in /sys/class/virtio-ports/*; do
  [ "$(cat "$p/name" 2>/dev/null)" = org.qemu.guest_agent.0 ] && port=/dev/$(basename "$p")
done
echo "prewarm-init: guest agent on \${port:-no port}"
while true; do
  /usr/sbin/qemu-ga --method=virtio-serial --path="$port" --statedir=/run
  echo "prewarm-init: guest agent exited with $?, restarting"
  sleep 0.2
done
`;
