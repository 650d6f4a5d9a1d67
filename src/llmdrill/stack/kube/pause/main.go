// A static stand-in for Kubernetes' pause image: the sandbox's PID 1 holds the pod's
// namespaces, reaps the orphans that land on it, and exits on SIGINT/SIGTERM (as PID 1
// in a PID namespace it would otherwise ignore them, and every pod deletion would wait
// for the runtime's SIGKILL). No registry is reachable, so this is built locally.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	children := make(chan os.Signal, 16)
	signal.Notify(children, syscall.SIGCHLD)
	for {
		select {
		case <-stop:
			os.Exit(0)
		case <-children:
			for {
				var status syscall.WaitStatus
				pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
		}
	}
}
