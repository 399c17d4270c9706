package main

import (
	"net"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
)

// The floor under the router's cost per egress packet: one UDP datagram of
// 100 bytes sent on loopback, as pion sends each packet (an unconnected
// socket, one sendto per packet), and two ways of sending it for less. A
// goroutine reads and discards on the other end, as a client would. On
// loopback the sender's system call also runs the receiving side of the
// kernel (softirq delivery, socket enqueue, waking the reader), so these
// are upper bounds of what a NIC would cost.
//
//	go test -run XXX -bench Loopback -benchtime 200000x ./cmd/loadtest

// threadCPU returns the CPU time of the calling OS thread.
func threadCPU() time.Duration {
	var ru syscall.Rusage
	const rusageThread = 1 // RUSAGE_THREAD
	_ = syscall.Getrusage(rusageThread, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// measureSender locks the benchmark goroutine to its thread and reports
// the sender's own CPU time per packet (the receivers run elsewhere):
// wall time per op depends on what else the machine runs.
func measureSender(b *testing.B) func() {
	runtime.LockOSThread()
	b.ResetTimer()
	start := threadCPU()
	return func() {
		b.ReportMetric(float64(threadCPU()-start)/float64(b.N), "cpu-ns/pkt")
		runtime.UnlockOSThread()
	}
}

func loopbackPair(b *testing.B, receivers int) (*net.UDPConn, []*net.UDPAddr, func()) {
	b.Helper()
	src, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	var dsts []*net.UDPAddr
	var conns []*net.UDPConn
	for i := 0; i < receivers; i++ {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			b.Fatal(err)
		}
		_ = c.SetReadBuffer(4 << 20)
		conns = append(conns, c)
		dsts = append(dsts, c.LocalAddr().(*net.UDPAddr))
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1500)
			for {
				if _, err := c.Read(buf); err != nil {
					return
				}
			}
		}()
	}
	return src, dsts, func() {
		src.Close()
		for _, c := range conns {
			c.Close()
		}
		wg.Wait()
	}
}

// BenchmarkLoopbackSendto: one sendto per packet on an unconnected socket,
// to 20 receivers in turn (pion's way).
func BenchmarkLoopbackSendto(b *testing.B) {
	src, dsts, done := loopbackPair(b, 20)
	defer done()
	pkt := make([]byte, 100)
	defer measureSender(b)()
	for i := 0; i < b.N; i++ {
		if _, err := src.WriteToUDP(pkt, dsts[i%len(dsts)]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLoopbackConnected: write on a connected socket (the route is
// cached in the socket), one receiver.
func BenchmarkLoopbackConnected(b *testing.B) {
	_, dsts, done := loopbackPair(b, 1)
	defer done()
	c, err := net.DialUDP("udp4", nil, dsts[0])
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	pkt := make([]byte, 100)
	defer measureSender(b)()
	for i := 0; i < b.N; i++ {
		if _, err := c.Write(pkt); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLoopbackSendmmsg: the same fan-out of one packet to 20
// receivers, 20 datagrams per sendmmsg system call; ns/op is per packet.
func BenchmarkLoopbackSendmmsg(b *testing.B) {
	src, dsts, done := loopbackPair(b, 20)
	defer done()
	pc := ipv4.NewPacketConn(src)
	msgs := make([]ipv4.Message, len(dsts))
	for i := range msgs {
		msgs[i] = ipv4.Message{Buffers: [][]byte{make([]byte, 100)}, Addr: dsts[i]}
	}
	defer measureSender(b)()
	for i := 0; i < b.N; i += len(msgs) {
		for sent := 0; sent < len(msgs); {
			n, err := pc.WriteBatch(msgs[sent:], 0)
			if err != nil {
				b.Fatal(err)
			}
			sent += n
		}
	}
}
