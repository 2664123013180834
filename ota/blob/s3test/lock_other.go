//go:build !unix

package s3test

func lockFile(string) (func(), error) { return nil, errNoLock }
