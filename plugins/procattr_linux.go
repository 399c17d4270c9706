package plugins

import (
	"os/exec"
	"syscall"
)

// setProcAttr makes the kernel kill the plugin if the router dies without
// stopping it, so that no plugin outlives its router.
func setProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
