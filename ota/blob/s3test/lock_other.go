//go:build !unix

package s3test

import "errors"

var errNoLock = errors.New("file locking not supported on this platform")

func lockFile(string) (func(), error) { return nil, errNoLock }
