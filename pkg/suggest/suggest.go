// Package suggest finds the known name closest to a mistyped one, for the
// "Did you mean this?" of Foster's CLIs (foster and foster-agent alike).
package suggest

import "strings"

// Closest returns the known name nearest to name by edit distance, or a
// known name name is a prefix of, or "" when nothing is near enough.
func Closest(name string, known []string) string {
	best, bestD := "", 1<<30
	for _, k := range known {
		d := EditDistance(name, k)
		if strings.HasPrefix(k, name) && len(name) > 0 {
			d = 1
		}
		if d < bestD {
			best, bestD = k, d
		}
	}
	if bestD > 2 && bestD > len(name)/2 {
		return ""
	}
	return best
}

// EditDistance is the Levenshtein distance between a and b.
func EditDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
