package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// taskSample sums what /proc says of every thread of a process about the
// scheduler: context switches (/proc/<pid>/task/<tid>/status) and the time
// its threads ran and waited on a run queue (…/schedstat). The process's
// own /proc/<pid>/status and schedstat are its main thread's only, which
// is rarely the one doing the work in a Go program. Threads that exit
// between two samples take their counts with them; a Go process at steady
// state keeps its threads.
type taskSample struct {
	Voluntary, Involuntary uint64
	OnCPU, RunQueueWait    time.Duration
	Threads                int
}

// readTasks samples the threads of pid.
func readTasks(pid int) (taskSample, error) {
	var s taskSample
	dirs, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*", pid))
	if err != nil {
		return s, err
	}
	if len(dirs) == 0 {
		return s, fmt.Errorf("no threads of pid %d", pid)
	}
	for _, d := range dirs {
		st, err := os.ReadFile(d + "/status")
		if err != nil {
			continue // the thread exited
		}
		for _, l := range strings.Split(string(st), "\n") {
			k, v, ok := strings.Cut(l, ":")
			if !ok {
				continue
			}
			n, _ := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			switch k {
			case "voluntary_ctxt_switches":
				s.Voluntary += n
			case "nonvoluntary_ctxt_switches":
				s.Involuntary += n
			}
		}
		// schedstat: time on CPU (ns), time waiting on a run queue (ns),
		// time slices run.
		ss, err := os.ReadFile(d + "/schedstat")
		if err == nil {
			f := strings.Fields(string(ss))
			if len(f) >= 2 {
				run, _ := strconv.ParseInt(f[0], 10, 64)
				wait, _ := strconv.ParseInt(f[1], 10, 64)
				s.OnCPU += time.Duration(run)
				s.RunQueueWait += time.Duration(wait)
			}
		}
		s.Threads++
	}
	return s, nil
}

// sub returns s − b, field by field.
func (s taskSample) sub(b taskSample) taskSample {
	return taskSample{
		Voluntary: s.Voluntary - b.Voluntary, Involuntary: s.Involuntary - b.Involuntary,
		OnCPU: s.OnCPU - b.OnCPU, RunQueueWait: s.RunQueueWait - b.RunQueueWait, Threads: s.Threads,
	}
}

// syscallEvents are the tracepoints perf counts for a process over the
// steady window: every system call, and the ones a media path makes.
var syscallEvents = []string{
	"raw_syscalls:sys_enter",
	"syscalls:sys_enter_sendmmsg", "syscalls:sys_enter_sendto", "syscalls:sys_enter_sendmsg",
	"syscalls:sys_enter_recvmmsg", "syscalls:sys_enter_recvfrom", "syscalls:sys_enter_recvmsg",
	"syscalls:sys_enter_epoll_pwait", "syscalls:sys_enter_futex", "syscalls:sys_enter_nanosleep",
}

// perfCounter is a running `perf stat` counting syscallEvents of one
// process (all its threads), as root or with perf_event_paranoid low
// enough for tracepoints.
type perfCounter struct {
	cmd  *exec.Cmd
	out  bytes.Buffer
	done chan error
}

// startPerf starts counting the system calls of pid. It fails when perf is
// missing; the figures are then left out.
func startPerf(pid int) (*perfCounter, error) {
	bin, err := exec.LookPath("perf")
	if err != nil {
		return nil, err
	}
	p := &perfCounter{done: make(chan error, 1)}
	p.cmd = exec.Command(bin, "stat", "-x", ",", "-e", strings.Join(syscallEvents, ","), "-p", strconv.Itoa(pid))
	p.cmd.Stderr = &p.out // perf stat writes its counts on stderr
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { p.done <- p.cmd.Wait() }()
	return p, nil
}

// stop ends the count (SIGINT, as perf expects) and returns the counts by
// short name: "syscalls" for every system call, else the call's name
// ("sendmmsg"). A count perf could not take is left out.
func (p *perfCounter) stop() (map[string]uint64, error) {
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		return nil, errors.New("perf stat did not stop")
	}
	counts := parsePerfCSV(p.out.Bytes())
	if len(counts) == 0 {
		return nil, fmt.Errorf("perf stat counted nothing: %s", strings.TrimSpace(p.out.String()))
	}
	return counts, nil
}

// parsePerfCSV reads `perf stat -x ,` output: value,unit,event,…
func parsePerfCSV(b []byte) map[string]uint64 {
	counts := map[string]uint64{}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Split(l, ",")
		if len(f) < 3 {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(f[0]), 10, 64)
		if err != nil {
			continue // <not counted>, <not supported>, comments
		}
		ev := strings.TrimSpace(f[2])
		switch {
		case ev == "raw_syscalls:sys_enter":
			counts["syscalls"] = n
		case strings.HasPrefix(ev, "syscalls:sys_enter_"):
			counts[strings.TrimPrefix(ev, "syscalls:sys_enter_")] = n
		}
	}
	return counts
}
