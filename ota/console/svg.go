package console

import (
	"fmt"
	"html/template"
	"strings"

	"github.com/foster-ota/foster/pkg/store"
)

// Plots are SVG drawn here, on the server: no script, no chart library.
// Only numbers and escaped text go into them.

// coveragePlot draws patch coverage (share of active devices on their
// model's latest release) over the report's days.
func coveragePlot(pts []store.CoveragePoint, active int) template.HTML {
	const w, h, left, bottom, top, right = 600, 200, 44, 24, 10, 10
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="plot" viewBox="0 0 %d %d" role="img" aria-label="patch coverage over the last %d days" preserveAspectRatio="xMidYMid meet">`, w, h, len(pts))
	pw, ph := float64(w-left-right), float64(h-top-bottom)
	for _, p := range []int{0, 25, 50, 75, 100} {
		y := float64(top) + ph*(1-float64(p)/100)
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#d0d7de" stroke-width="1"/>`, left, w-right, y, y)
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" font-size="11" text-anchor="end" fill="#57606a">%d%%</text>`, left-6, y+4, p)
	}
	if len(pts) > 0 && active > 0 {
		var path strings.Builder
		step := pw / float64(max(len(pts)-1, 1))
		for i, p := range pts {
			share := min(float64(p.Patched)/float64(active), 1)
			x := float64(left) + step*float64(i)
			y := float64(top) + ph*(1-share)
			if i == 0 {
				fmt.Fprintf(&path, "M%.1f %.1f", x, y)
			} else {
				fmt.Fprintf(&path, " L%.1f %.1f", x, y)
			}
		}
		area := path.String() + fmt.Sprintf(" L%.1f %.1f L%d %.1f Z", float64(left)+pw, float64(top)+ph, left, float64(top)+ph)
		fmt.Fprintf(&b, `<path d="%s" fill="#2da44e" fill-opacity="0.15" stroke="none"/>`, area)
		fmt.Fprintf(&b, `<path d="%s" fill="none" stroke="#1a7f37" stroke-width="2"/>`, path.String())
		fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="11" fill="#57606a">%s</text>`, left, h-6, pts[0].Day.UTC().Format("Jan 2"))
		fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="11" text-anchor="end" fill="#57606a">today</text>`, w-right, h-6)
	} else {
		fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="13" text-anchor="middle" fill="#57606a">no active devices</text>`, w/2, h/2)
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

// versionColors are the bar's segments, newest first (the latest is green).
var versionColors = []string{"#2da44e", "#54aeff", "#bf8700", "#cf222e", "#8250df", "#6e7781"}

// versionBar draws one model's devices by version as a stacked bar.
func versionBar(vs []versionRow) template.HTML {
	total := 0
	for _, v := range vs {
		total += v.Installed
	}
	var b strings.Builder
	b.WriteString(`<svg class="bar" viewBox="0 0 100 8" preserveAspectRatio="none" role="img" aria-label="devices by version">`)
	b.WriteString(`<rect x="0" y="0" width="100" height="8" fill="#eaeef2"/>`)
	x := 0.0
	for i, v := range vs {
		if total == 0 || v.Installed == 0 {
			continue
		}
		wd := 100 * float64(v.Installed) / float64(total)
		color := versionColors[min(i, len(versionColors)-1)]
		if !v.Latest && i == 0 {
			color = versionColors[1]
		}
		fmt.Fprintf(&b, `<rect x="%.2f" y="0" width="%.2f" height="8" fill="%s"><title>%s: %d</title></rect>`, x, wd, color, template.HTMLEscapeString(v.Version), v.Installed)
		x += wd
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

// rateBar draws a failure rate against its threshold.
func rateBar(rate, threshold float64) template.HTML {
	const scale = 2.0 // the bar spans 0..2x the threshold
	full := max(threshold*scale, rate, 0.0001)
	color := "#2da44e"
	if rate >= threshold {
		color = "#cf222e"
	} else if rate >= threshold/2 {
		color = "#bf8700"
	}
	var b strings.Builder
	b.WriteString(`<svg class="bar" viewBox="0 0 100 8" preserveAspectRatio="none" role="img" aria-label="failure rate against the threshold">`)
	b.WriteString(`<rect x="0" y="0" width="100" height="8" fill="#eaeef2"/>`)
	fmt.Fprintf(&b, `<rect x="0" y="0" width="%.2f" height="8" fill="%s"/>`, min(100, 100*rate/full), color)
	fmt.Fprintf(&b, `<rect x="%.2f" y="0" width="0.8" height="8" fill="#24292f"><title>threshold</title></rect>`, min(99.2, 100*threshold/full))
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}
