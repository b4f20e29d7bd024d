// Command manymodels-chartlock writes or checks a chart's Chart.lock offline with Helm's own resolver.
//
// It is compiled inside a copy of the helm.sh/helm/v3 module (see ci/chart-tools.sh) because the
// resolver is an internal package. With no repository configured, the resolver locks each dependency of
// an exact pinned version to that version without fetching a repository index (the same lock and
// digest `helm dependency update` writes online), so this works with no network.
//
//	manymodels-chartlock [-check] CHART_DIR
//
// -check fails, like `helm dependency build` does, when Chart.lock is out of sync with Chart.yaml.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/Masterminds/semver/v3"
	"sigs.k8s.io/yaml"

	"helm.sh/helm/v3/internal/resolver"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
)

func main() {
	check := flag.Bool("check", false, "verify Chart.lock is in sync with Chart.yaml instead of writing it")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: manymodels-chartlock [-check] CHART_DIR")
		os.Exit(2)
	}
	if err := run(flag.Arg(0), *check); err != nil {
		fmt.Fprintln(os.Stderr, "chartlock:", err)
		os.Exit(1)
	}
}

func run(dir string, check bool) error {
	c, err := loader.LoadDir(dir)
	if err != nil {
		return err
	}
	if c.Metadata.APIVersion != chart.APIVersionV2 {
		return fmt.Errorf("%s: apiVersion %q, want v2", dir, c.Metadata.APIVersion)
	}
	req := c.Metadata.Dependencies
	if check {
		if c.Lock == nil {
			return fmt.Errorf("%s: no Chart.lock", dir)
		}
		// exactly the test `helm dependency build` applies (pkg/downloader.Manager.Build)
		sum, err := resolver.HashReq(req, c.Lock.Dependencies)
		if err != nil || sum != c.Lock.Digest {
			return fmt.Errorf("the lock file (Chart.lock) is out of sync with the dependencies file (Chart.yaml): digest %s, want %s", c.Lock.Digest, sum)
		}
		for _, d := range c.Lock.Dependencies {
			fmt.Printf("%s %s %s\n", d.Name, d.Version, d.Repository)
		}
		fmt.Println("Chart.lock in sync:", c.Lock.Digest)
		return nil
	}
	for _, d := range req {
		if _, err := semver.StrictNewVersion(d.Version); err != nil && d.Repository != "" {
			return fmt.Errorf("dependency %q: version %q is a range; offline locking needs an exact version", d.Name, d.Version)
		}
	}
	// No repository names: the resolver locks exact versions without reading any index.
	lock, err := resolver.New(dir, filepath.Join(os.TempDir(), "manymodels-chartlock-cache"), nil).Resolve(req, map[string]string{})
	if err != nil {
		return err
	}
	// as pkg/downloader.Manager.Update: an unchanged lock is not rewritten (keeps its timestamp)
	if c.Lock != nil && c.Lock.Digest == lock.Digest {
		fmt.Println("Chart.lock unchanged:", lock.Digest)
		return nil
	}
	data, err := yaml.Marshal(lock)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "Chart.lock"), data, 0o644); err != nil {
		return err
	}
	fmt.Println("wrote Chart.lock:", lock.Digest)
	return nil
}
