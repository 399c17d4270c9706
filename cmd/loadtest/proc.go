package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTick is USER_HZ, the unit of /proc/<pid>/stat CPU times: 100 on
// every Linux architecture Go supports.
const clockTick = 100

// procSample is what /proc says about one process at one moment.
type procSample struct {
	At      time.Time
	CPU     time.Duration // user + system
	Sys     time.Duration // system
	RSSKiB  int64         // VmRSS
	HWMKiB  int64         // VmHWM: peak RSS since the process started
	Threads int
}

// readProc samples /proc/<pid>/stat and /proc/<pid>/status.
func readProc(pid int) (procSample, error) {
	s := procSample{At: time.Now()}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, err
	}
	// The command name is in parentheses and may hold spaces: split after
	// the last ')'. Fields from there on: state is field 3 of proc(5).
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return s, errors.New("unexpected /proc/pid/stat")
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 18 {
		return s, errors.New("short /proc/pid/stat")
	}
	utime, err1 := strconv.ParseInt(f[14-3], 10, 64)
	stime, err2 := strconv.ParseInt(f[15-3], 10, 64)
	if err1 != nil || err2 != nil {
		return s, errors.New("bad cpu times in /proc/pid/stat")
	}
	s.CPU = time.Duration(utime+stime) * time.Second / clockTick
	s.Sys = time.Duration(stime) * time.Second / clockTick

	st, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	defer st.Close()
	sc := bufio.NewScanner(st)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB"))
		n, _ := strconv.ParseInt(v, 10, 64)
		switch k {
		case "VmRSS":
			s.RSSKiB = n
		case "VmHWM":
			s.HWMKiB = n
		case "Threads":
			s.Threads = int(n)
		}
	}
	return s, sc.Err()
}

// selfCPU returns this process's user + system CPU time, at microsecond
// resolution.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// machineSample is the machine-wide CPU accounting of /proc/stat.
type machineSample struct {
	Busy, Total time.Duration
}

func readMachine() (machineSample, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return machineSample{}, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return machineSample{}, errors.New("unexpected /proc/stat")
	}
	var total, idle int64
	for i, v := range f[1:] {
		if i >= 8 { // guest times are already in user and nice
			break
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		total += n
		if i == 3 || i == 4 { // idle, iowait
			idle += n
		}
	}
	tick := time.Second / clockTick
	return machineSample{Busy: time.Duration(total-idle) * tick, Total: time.Duration(total) * tick}, nil
}

// loadAvg returns /proc/loadavg's first three fields.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// cpusAllowed returns the CPU affinity list of pid (0: this process).
func cpusAllowed(pid int) string {
	p := "/proc/self/status"
	if pid > 0 {
		p = fmt.Sprintf("/proc/%d/status", pid)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && k == "Cpus_allowed_list" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// udpDrops returns the datagrams the kernel dropped on pid's UDP sockets
// because their receive buffers were full (the drops column of
// /proc/net/udp, summed over the sockets pid has open). It tells a
// receiver that fell behind from loss elsewhere.
func udpDrops(pid int) (uint64, error) {
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0, err
	}
	inodes := make(map[string]bool, len(fds))
	for _, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	var drops uint64
	for _, f := range []string{"/proc/net/udp", "/proc/net/udp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fl := strings.Fields(line)
			if len(fl) < 13 || !inodes[fl[9]] {
				continue
			}
			n, _ := strconv.ParseUint(fl[12], 10, 64)
			drops += n
		}
	}
	return drops, nil
}

// machineCPUs counts the machine's online CPUs from /proc/stat, whatever
// this process's affinity (runtime.NumCPU counts only the CPUs it may use).
func machineCPUs() int {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return runtime.NumCPU()
	}
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		if len(l) > 3 && strings.HasPrefix(l, "cpu") && l[3] >= '0' && l[3] <= '9' {
			n++
		}
	}
	if n == 0 {
		return runtime.NumCPU()
	}
	return n
}
