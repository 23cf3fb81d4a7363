//! A static program the containment tests copy into a sandbox and run: it
//! tries one forbidden system call per argument and prints `NAME=ok` or
//! `NAME=errno:N` for each. std only; compiled by the test with `rustc`.

use std::io::Error;

unsafe extern "C" {
    fn syscall(n: i64, ...) -> i64;
    fn _exit(code: i32) -> !;
}

fn report(name: &str, rc: i64) {
    if rc < 0 {
        println!("{name}=errno:{}", Error::last_os_error().raw_os_error().unwrap_or(0));
    } else {
        println!("{name}=ok");
    }
}

fn main() {
    let null = std::ptr::null::<u8>();
    let cstr = |s: &str| std::ffi::CString::new(s).unwrap_or_default();
    let tmp = cstr("/tmp");
    let tmpfs = cstr("tmpfs");
    let dev = cstr("/tmp/sda");
    let ns = cstr("/proc/1/ns/net");
    let zero = [0u8; 256];
    for what in std::env::args().skip(1) {
        let rc = unsafe {
            match what.as_str() {
                "ptrace_attach" => syscall(101, 16i64, 1i64, 0i64, 0i64),
                "ptrace_traceme" => syscall(101, 0i64, 0i64, 0i64, 0i64),
                "process_vm_readv" => syscall(310, 1i64, null, 0i64, null, 0i64, 0i64),
                "keyctl" => syscall(250, 0i64, -3i64, 1i64),
                "add_key" => syscall(248, cstr("user").as_ptr(), cstr("k").as_ptr(), null, 0i64, -3i64),
                "bpf" => syscall(321, 5i64, zero.as_ptr(), 64i64),
                "perf_event_open" => syscall(298, zero.as_ptr(), 0i64, -1i64, -1i64, 0i64),
                "init_module" => syscall(175, zero.as_ptr(), 16i64, cstr("").as_ptr()),
                "finit_module" => syscall(313, 0i64, cstr("").as_ptr(), 0i64),
                "raw_socket" => syscall(41, 2i64, 3i64, 1i64),
                "packet_socket" => syscall(41, 17i64, 3i64, 0i64),
                "settimeofday" => syscall(164, zero.as_ptr(), null),
                "clock_settime" => syscall(227, 0i64, zero.as_ptr()),
                "sethostname" => syscall(170, cstr("evil").as_ptr(), 4i64),
                "mount" => syscall(165, tmpfs.as_ptr(), tmp.as_ptr(), tmpfs.as_ptr(), 0i64, null),
                "umount" => syscall(166, cstr("/proc").as_ptr(), 2i64),
                "unshare_user" => syscall(272, 0x1000_0000i64),
                "unshare_net" => syscall(272, 0x4000_0000i64),
                "setns" => {
                    let fd = syscall(2, ns.as_ptr(), 0i64);
                    syscall(308, fd, 0i64)
                }
                "clone_newuser" => {
                    let rc = syscall(56, 0x1000_0000i64 | 17, 0i64, 0i64, 0i64, 0i64);
                    if rc == 0 {
                        _exit(0);
                    }
                    rc
                }
                "pivot_root" => syscall(155, tmp.as_ptr(), tmp.as_ptr()),
                "chroot" => syscall(161, tmp.as_ptr()),
                "mknod_block" => syscall(133, dev.as_ptr(), 0o060600i64, 0x800i64),
                "io_uring_setup" => syscall(425, 8i64, zero.as_ptr()),
                "userfaultfd" => syscall(323, 0i64),
                "kexec_load" => syscall(246, 0i64, 0i64, null, 0i64),
                "reboot" => syscall(169, 0xfee1deadi64, 672274793i64, 0x4321fedci64, null),
                "open_by_handle_at" => syscall(304, -100i64, zero.as_ptr(), 0i64),
                "swapon" => syscall(167, tmp.as_ptr(), 0i64),
                "membomb" => {
                    let mut hold = Vec::new();
                    loop {
                        let mut chunk = vec![1u8; 16 << 20];
                        chunk[0] = 2;
                        hold.push(chunk);
                        println!("allocated {} MiB", hold.len() * 16);
                    }
                }
                other => {
                    println!("{other}=unknown");
                    continue;
                }
            }
        };
        report(&what, rc);
    }
}
