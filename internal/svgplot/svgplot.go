// Package svgplot draws line charts over time as a standalone SVG: one panel
// per metric, stacked, sharing the x axis, with labelled axes, ticks and a
// legend. It is small on purpose (resync's soak plot); no dependencies.
package svgplot

import (
	"bufio"
	"fmt"
	"html"
	"io"
	"math"
	"strconv"
)

// Series is one line.
type Series struct {
	Name string
	X, Y []float64
}

// Panel is one chart.
type Panel struct {
	Title  string
	YLabel string
	Series []Series
}

// Plot is the whole figure.
type Plot struct {
	Title  string
	XLabel string
	Panels []Panel
	// Shade, when Shade[1] > Shade[0], shades that x range in every
	// panel, labelled ShadeLabel.
	Shade      [2]float64
	ShadeLabel string
}

const (
	width       = 960
	panelHeight = 230
	top         = 50
	left        = 90
	right       = 30
	gap         = 40 // below each panel: x tick labels
	bottom      = 40
)

var colors = []string{"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"}

// Write renders p as SVG.
func Write(w io.Writer, p Plot) error {
	bw := bufio.NewWriter(w)
	h := top + len(p.Panels)*(panelHeight+gap) + bottom
	fmt.Fprintf(bw, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", width, h, width, h)
	fmt.Fprintf(bw, `<rect width="%d" height="%d" fill="white"/>`+"\n", width, h)
	fmt.Fprintf(bw, `<text x="%d" y="24" font-size="16" font-weight="bold" text-anchor="middle">%s</text>`+"\n", width/2, esc(p.Title))
	xmin, xmax := math.Inf(1), math.Inf(-1)
	for _, pn := range p.Panels {
		for _, s := range pn.Series {
			for _, x := range s.X {
				xmin, xmax = math.Min(xmin, x), math.Max(xmax, x)
			}
		}
	}
	if math.IsInf(xmin, 0) {
		xmin, xmax = 0, 1
	}
	if xmax <= xmin {
		xmax = xmin + 1
	}
	// The x axis spans the data; ticks outside it are dropped.
	var xticks []float64
	for _, t := range ticks(xmin, xmax) {
		if t >= xmin-1e-9*(xmax-xmin) && t <= xmax+1e-9*(xmax-xmin) {
			xticks = append(xticks, t)
		}
	}
	pw := float64(width - left - right)
	for i, pn := range p.Panels {
		y0 := float64(top + i*(panelHeight+gap))
		ph := float64(panelHeight - 30)
		ptop := y0 + 24
		ymin, ymax := 0.0, math.Inf(-1)
		for _, s := range pn.Series {
			for _, y := range s.Y {
				if !math.IsNaN(y) {
					ymin, ymax = math.Min(ymin, y), math.Max(ymax, y)
				}
			}
		}
		if math.IsInf(ymax, 0) || ymax <= ymin {
			ymax = ymin + 1
		}
		yticks := ticks(ymin, ymax*1.05)
		ymin, ymax = yticks[0], yticks[len(yticks)-1]
		sx := func(x float64) float64 { return float64(left) + (x-xmin)/(xmax-xmin)*pw }
		sy := func(y float64) float64 { return ptop + ph - (y-ymin)/(ymax-ymin)*ph }
		fmt.Fprintf(bw, `<text x="%d" y="%.1f" font-size="14" font-weight="bold">%s</text>`+"\n", left, y0+14, esc(pn.Title))
		if p.Shade[1] > p.Shade[0] {
			a, b := sx(math.Max(p.Shade[0], xmin)), sx(math.Min(p.Shade[1], xmax))
			fmt.Fprintf(bw, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="#f0f0f0"/>`+"\n", a, ptop, b-a, ph)
			if i == 0 && p.ShadeLabel != "" {
				fmt.Fprintf(bw, `<text x="%.1f" y="%.1f" fill="#777" text-anchor="middle">%s</text>`+"\n", (a+b)/2, ptop+ph-8, esc(p.ShadeLabel))
			}
		}
		// Grid and y ticks.
		for _, t := range yticks {
			y := sy(t)
			fmt.Fprintf(bw, `<line x1="%d" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", left, y, float64(left)+pw, y)
			fmt.Fprintf(bw, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, y+4, num(t))
		}
		for _, t := range xticks {
			x := sx(t)
			fmt.Fprintf(bw, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#eee"/>`+"\n", x, ptop, x, ptop+ph)
			fmt.Fprintf(bw, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", x, ptop+ph+16, num(t))
		}
		fmt.Fprintf(bw, `<rect x="%d" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="#333"/>`+"\n", left, ptop, pw, ph)
		cy := ptop + ph/2
		fmt.Fprintf(bw, `<text x="22" y="%.1f" text-anchor="middle" transform="rotate(-90 22 %.1f)">%s</text>`+"\n", cy, cy, esc(pn.YLabel))
		if i == len(p.Panels)-1 {
			fmt.Fprintf(bw, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", float64(left)+pw/2, ptop+ph+34, esc(p.XLabel))
		}
		// Lines.
		for k, s := range pn.Series {
			c := colors[k%len(colors)]
			fmt.Fprintf(bw, `<polyline fill="none" stroke="%s" stroke-width="1.6" points="`, c)
			for j := range s.X {
				if j < len(s.Y) && !math.IsNaN(s.Y[j]) {
					fmt.Fprintf(bw, "%.1f,%.1f ", sx(s.X[j]), sy(s.Y[j]))
				}
			}
			fmt.Fprintln(bw, `"/>`)
			lx := float64(left) + pw - 200
			ly := ptop + 16 + float64(k)*16
			fmt.Fprintf(bw, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="3"/>`+"\n", lx, ly-4, lx+20, ly-4, c)
			fmt.Fprintf(bw, `<text x="%.1f" y="%.1f">%s</text>`+"\n", lx+26, ly, esc(s.Name))
		}
	}
	fmt.Fprintln(bw, "</svg>")
	return bw.Flush()
}

// ticks returns about 5 round tick values covering [lo, hi].
func ticks(lo, hi float64) []float64 {
	span := hi - lo
	if span <= 0 {
		span = 1
	}
	raw := span / 5
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := mag
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*mag >= raw {
			step = m * mag
			break
		}
	}
	start := math.Floor(lo/step) * step
	var out []float64
	for v := start; v < hi+step*0.999; v += step {
		out = append(out, v)
	}
	if len(out) < 2 {
		out = append(out, start+step)
	}
	return out
}

func num(v float64) string {
	if v == math.Trunc(v) && math.Abs(v) < 1e9 {
		return strconv.FormatInt(int64(v), 10)
	}
	return strconv.FormatFloat(v, 'g', 4, 64)
}

func esc(s string) string { return html.EscapeString(s) }
