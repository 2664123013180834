package blob

// SetS3CopyLimits lets tests exercise the multipart copy of objects over
// 5 GiB with small objects.
func SetS3CopyLimits(s *S3, maxCopyObject, partSize int64) {
	s.maxCopy, s.copyPart = maxCopyObject, partSize
}
