// Command coredns is CoreDNS with only the plugins the real-node e2e cluster needs (cluster DNS for
// Services and pods, forwarding the rest to the host's resolver). Building CoreDNS with a plugin subset
// by setting dnsserver.Directives is CoreDNS's own documented way to compile it without its source tree;
// the order below follows CoreDNS's plugin.cfg (a plugin's place in the list is its place in the chain).
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

var directives = []string{
	"bind",
	"ready",
	"health",
	"errors",
	"log",
	"loadbalance",
	"cache",
	"kubernetes",
	"forward",
}

func init() { dnsserver.Directives = directives }

func main() { coremain.Run() }
