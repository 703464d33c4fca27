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
	x := xAxisOf(p)
	for i, pn := range p.Panels {
		writePanel(bw, p, i, pn, x)
	}
	fmt.Fprintln(bw, "</svg>")
	return bw.Flush()
}

// xAxis is the x range every panel shares, and its ticks.
type xAxis struct {
	min, max float64
	ticks    []float64
}

// xAxisOf spans the data of every panel; ticks outside it are dropped.
func xAxisOf(p Plot) xAxis {
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
	a := xAxis{min: xmin, max: xmax}
	for _, t := range ticks(xmin, xmax) {
		if t >= xmin-1e-9*(xmax-xmin) && t <= xmax+1e-9*(xmax-xmin) {
			a.ticks = append(a.ticks, t)
		}
	}
	return a
}

// panelFrame is where panel i sits and how it maps data to pixels.
type panelFrame struct {
	top, height, width float64 // the plot area's top, height and width
	yticks             []float64
	sx, sy             func(float64) float64
}

func frameOf(i int, pn Panel, x xAxis) panelFrame {
	y0 := float64(top + i*(panelHeight+gap))
	f := panelFrame{top: y0 + 24, height: float64(panelHeight - 30), width: float64(width - left - right)}
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
	f.yticks = ticks(ymin, ymax*1.05)
	ymin, ymax = f.yticks[0], f.yticks[len(f.yticks)-1]
	f.sx = func(v float64) float64 { return float64(left) + (v-x.min)/(x.max-x.min)*f.width }
	f.sy = func(v float64) float64 { return f.top + f.height - (v-ymin)/(ymax-ymin)*f.height }
	return f
}

// writePanel draws panel i: title, shade, grid and ticks, frame, axis
// labels, then its lines and legend.
func writePanel(bw *bufio.Writer, p Plot, i int, pn Panel, x xAxis) {
	f := frameOf(i, pn, x)
	ptop, ph, pw := f.top, f.height, f.width
	fmt.Fprintf(bw, `<text x="%d" y="%.1f" font-size="14" font-weight="bold">%s</text>`+"\n", left, ptop-24+14, esc(pn.Title))
	if p.Shade[1] > p.Shade[0] {
		a, b := f.sx(math.Max(p.Shade[0], x.min)), f.sx(math.Min(p.Shade[1], x.max))
		fmt.Fprintf(bw, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="#f0f0f0"/>`+"\n", a, ptop, b-a, ph)
		if i == 0 && p.ShadeLabel != "" {
			fmt.Fprintf(bw, `<text x="%.1f" y="%.1f" fill="#777" text-anchor="middle">%s</text>`+"\n", (a+b)/2, ptop+ph-8, esc(p.ShadeLabel))
		}
	}
	for _, t := range f.yticks {
		y := f.sy(t)
		fmt.Fprintf(bw, `<line x1="%d" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", left, y, float64(left)+pw, y)
		fmt.Fprintf(bw, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, y+4, num(t))
	}
	for _, t := range x.ticks {
		xx := f.sx(t)
		fmt.Fprintf(bw, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#eee"/>`+"\n", xx, ptop, xx, ptop+ph)
		fmt.Fprintf(bw, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", xx, ptop+ph+16, num(t))
	}
	fmt.Fprintf(bw, `<rect x="%d" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="#333"/>`+"\n", left, ptop, pw, ph)
	cy := ptop + ph/2
	fmt.Fprintf(bw, `<text x="22" y="%.1f" text-anchor="middle" transform="rotate(-90 22 %.1f)">%s</text>`+"\n", cy, cy, esc(pn.YLabel))
	if i == len(p.Panels)-1 {
		fmt.Fprintf(bw, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", float64(left)+pw/2, ptop+ph+34, esc(p.XLabel))
	}
	for k, s := range pn.Series {
		writeSeries(bw, f, k, s)
	}
}

// writeSeries draws series k of a panel and its legend entry.
func writeSeries(bw *bufio.Writer, f panelFrame, k int, s Series) {
	c := colors[k%len(colors)]
	fmt.Fprintf(bw, `<polyline fill="none" stroke="%s" stroke-width="1.6" points="`, c)
	for j := range s.X {
		if j < len(s.Y) && !math.IsNaN(s.Y[j]) {
			fmt.Fprintf(bw, "%.1f,%.1f ", f.sx(s.X[j]), f.sy(s.Y[j]))
		}
	}
	fmt.Fprintln(bw, `"/>`)
	lx := float64(left) + f.width - 200
	ly := f.top + 16 + float64(k)*16
	fmt.Fprintf(bw, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="3"/>`+"\n", lx, ly-4, lx+20, ly-4, c)
	fmt.Fprintf(bw, `<text x="%.1f" y="%.1f">%s</text>`+"\n", lx+26, ly, esc(s.Name))
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
