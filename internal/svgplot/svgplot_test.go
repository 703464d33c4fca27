package svgplot

import (
	"encoding/xml"
	"io"
	"strings"
	"testing"
)

// The output is well-formed XML with one polyline per series, the titles,
// the axis labels and the legend, escaped.
func TestWriteIsWellFormedWithLabels(t *testing.T) {
	var b strings.Builder
	err := Write(&b, Plot{Title: "soak <test>", XLabel: "minutes", Shade: [2]float64{2, 3}, ShadeLabel: "last third",
		Panels: []Panel{
			{Title: "db", YLabel: "MiB", Series: []Series{{Name: "size", X: []float64{0, 1, 2, 3}, Y: []float64{1, 2, 2, 2}}, {Name: "in use & more", X: []float64{0, 3}, Y: []float64{0.5, 1}}}},
			{Title: "flat", YLabel: "n", Series: []Series{{Name: "g", X: []float64{0, 3}, Y: []float64{5, 5}}}},
		}})
	if err != nil {
		t.Fatal(err)
	}
	out := b.String()
	d := xml.NewDecoder(strings.NewReader(out))
	for {
		if _, err := d.Token(); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("not well-formed XML: %v\n%s", err, out)
		}
	}
	for _, want := range []string{"soak &lt;test&gt;", "minutes", "MiB", "in use &amp; more", "last third", ">db<", ">flat<"} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q", want)
		}
	}
	if n := strings.Count(out, "<polyline"); n != 3 {
		t.Errorf("%d polylines, want 3", n)
	}
}

func TestTicksCoverTheRange(t *testing.T) {
	for _, r := range [][2]float64{{0, 1}, {0, 7.3}, {12, 980}, {0, 0.004}, {5, 5}} {
		tk := ticks(r[0], r[1])
		if len(tk) < 2 || tk[0] > r[0] || tk[len(tk)-1] < r[1] {
			t.Errorf("ticks(%v) = %v", r, tk)
		}
	}
}
