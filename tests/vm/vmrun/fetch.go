package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
)

// cmdFetch is "vmrun fetch [-refresh] KERNEL...": it brings each kernel into
// the cache (see cache.go) and prints where it is.
func cmdFetch(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("fetch", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	refresh := fs.Bool("refresh", false, "ask the archive for the newest kernel even if one is cached")
	if err := fs.Parse(args); err != nil {
		return &exitError{code: exitUsage}
	}
	if fs.NArg() == 0 {
		return &exitError{code: exitUsage, err: errors.New("fetch: name at least one kernel (e.g. bullseye bookworm)")}
	}
	c := &cache{env: e}
	for _, spec := range fs.Args() {
		k, err := c.resolve(ctx, spec, *refresh)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "%s\t%s\t%s\t%s\n", spec, k.Release, k.Package+" "+k.Version, k.Dir)
	}
	return nil
}

// cmdUserland is "vmrun userland [-refresh] [RELEASE]": it brings the root
// file system guests boot into the cache (see userland.go) and prints where
// it is.
func cmdUserland(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("userland", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	refresh := fs.Bool("refresh", false, "ask the archive for newer packages even if a userland is cached")
	if err := fs.Parse(args); err != nil || fs.NArg() > 1 {
		return &exitError{code: exitUsage, err: errors.New("usage: vmrun userland [-refresh] [RELEASE]")}
	}
	spec := defaultUserland
	if fs.NArg() == 1 {
		spec = fs.Arg(0)
	}
	u, err := (&cache{env: e}).userland(ctx, spec, *refresh)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "%s\t%s\t%d packages\t%s\n", u.Dist, u.ID, len(u.Packages), u.Root())
	return nil
}
