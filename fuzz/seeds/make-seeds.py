#!/usr/bin/env python3
"""Writes the seed inputs of the byte-oriented fuzz targets (kernel_loader, config_json,
api_request) next to this script: a minimal ELF vmlinux with a PVH note, one without, a minimal
bzImage, config documents and API requests. scripts/fuzz passes fuzz/seeds/<target> to libFuzzer
as a second corpus directory. Run it again after changing it; the outputs are committed."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    os.makedirs(os.path.join(HERE, target), exist_ok=True)
    with open(os.path.join(HERE, target, name), "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def elf(pvh):
    phnum = 2 if pvh else 1
    ehdr = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    ehdr += struct.pack("<HHIQQQIHHHHHH", 2, 0x3E, 1, 0x100000, 64, 0, 0, 64, 56, phnum, 64, 0, 0)
    note_off = 64 + 56 * phnum
    note = struct.pack("<III", 4, 4, 18) + b"Xen\0" + struct.pack("<I", 0x100000)
    code_off = (note_off + len(note) + 15) & ~15 if pvh else note_off
    code = b"\xf4" * 16  # hlt
    phdrs = struct.pack("<IIQQQQQQ", 1, 5, code_off, 0x100000, 0x100000, len(code), 0x1000, 16)
    if pvh:
        phdrs += struct.pack("<IIQQQQQQ", 4, 4, note_off, 0, 0, len(note), len(note), 4)
    image = ehdr + phdrs + (note if pvh else b"")
    return image + bytes(code_off - len(image)) + code


def bzimage():
    setup = bytearray(1024)  # setup_sects = 1: (1 + 1) * 512 bytes of setup
    setup[0x1F1] = 1
    setup[0x1FE:0x200] = b"\x55\xaa"
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x020F)  # boot protocol 2.15
    setup[0x211] = 1  # loadflags: LOADED_HIGH
    struct.pack_into("<I", setup, 0x214, 0x100000)  # code32_start
    struct.pack_into("<H", setup, 0x236, 1)  # xloadflags: XLF_KERNEL_64
    return bytes(setup) + b"\xf4" * 512


write("kernel_loader", "elf-pvh", elf(True))
write("kernel_loader", "elf-linux64", elf(False))
write("kernel_loader", "bzimage", bzimage())

write("config_json", "full", """{
  "boot-source": {"kernel_image_path": "/dev/null", "initrd_path": "/dev/null",
                  "boot_args": "console=ttyS0 quiet", "boot_protocol": "pvh"},
  "machine-config": {"vcpu_count": 2, "mem_size_mib": 256, "pvm_compat": "off"},
  "drives": [{"drive_id": "rootfs", "path_on_host": "/dev/null", "is_root_device": true,
              "is_read_only": true},
             {"path_on_host": "/dev/zero", "is_root_device": false, "is_read_only": false}],
  "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0",
                          "guest_mac": "02:00:00:00:00:01"}],
  "serial": {"mode": "none"},
  "logger": {"level": "Debug"}
}""")
write("config_json", "minimal", '{"boot-source": {"kernel_image_path": "/k"}}')
write("config_json", "serial-file",
      '{"boot-source": {"kernel_image_path": "/k"}, "serial": {"mode": "file", "path": "/tmp/x"}}')

def req(method, path, body="", headers=""):
    length = f"Content-Length: {len(body)}\r\n" if body else ""
    return f"{method} {path} HTTP/1.1\r\n{headers}{length}\r\n{body}"


requests = {
    "get-root": req("GET", "/", headers="Host: localhost\r\n"),
    "put-machine": req("PUT", "/machine-config", '{"vcpu_count": 2, "mem_size_mib": 64}'),
    "put-boot": req("PUT", "/boot-source",
                    '{"kernel_image_path": "/dev/null", "boot_args": "console=ttyS0 quiet"}',
                    "Content-Type: application/json\r\n"),
    "put-drive": req("PUT", "/drives/rootfs",
                     '{"drive_id": "rootfs", "path_on_host": "/dev/null", '
                     '"is_root_device": true, "is_read_only": true}'),
    "put-net": req("PUT", "/network-interfaces/eth0",
                   '{"iface_id": "eth0", "host_dev_name": "tap0", '
                   '"guest_mac": "02:00:00:00:00:01"}'),
    "pipelined": req("GET", "/machine-config")
    + req("PATCH", "/vm", '{"state": "Paused"}')
    + req("PUT", "/actions", '{"action_type": "SendCtrlAltDel"}', "Expect: 100-continue\r\n")
    + "GET /vm/config HTTP/1.0\r\nConnection: close\r\n\r\n",
}
for name, text in requests.items():
    write("api_request", name, text)
