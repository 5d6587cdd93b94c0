package main

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"math"
	"os"
	"slices"
	"strconv"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// The chart (latest.png beside latest.json): two panels of grouped bars,
// one group per system (direct, trellis, haproxy, nginx). Left: p50 and p99
// at the fixed rate, per body; right: max req/s, per body. Drawn with
// image/draw and x/image's built-in bitmap font: no font files, no
// plotting library.

const (
	chartW, chartH = 1200, 560
	chartTop       = 72  // title and legend above
	chartBottom    = 500 // axis line; group labels below
)

// chartSystems are the rows charted, in order.
var chartSystems = []string{"direct", "trellis", "haproxy", "nginx"}

var errNoChartData = errors.New("chart: none of " + fmt.Sprint(chartSystems) + " ran")

var (
	colWhite = color.RGBA{255, 255, 255, 255}
	colInk   = color.RGBA{40, 40, 40, 255}
	colGrid  = color.RGBA{225, 225, 225, 255}
	// Per body: a light shade for p50 (and max req/s), a dark one for p99.
	bodyColors = [][2]color.RGBA{
		{{110, 160, 220, 255}, {30, 80, 160, 255}}, // 0B: blues
		{{245, 170, 90, 255}, {200, 100, 20, 255}}, // 1KiB: oranges
		{{140, 200, 130, 255}, {50, 130, 50, 255}}, // 1KiB-post: greens
	}
)

// bar is one bar of a panel, in pixels, with its value.
type bar struct {
	rect  image.Rectangle
	col   color.RGBA
	value float64
}

// chartSeries is one kind of bar in every group: which body, which figure.
type chartSeries struct {
	label string
	body  string
	col   color.RGBA
	value func(result) float64
}

// chartBodies are the bodies present in rs, in allBodies order.
func chartBodies(rs []result) []body {
	var out []body
	for _, b := range allBodies {
		if slices.ContainsFunc(rs, func(r result) bool { return r.Body == b.name }) {
			out = append(out, b)
		}
	}
	return out
}

// chartGroups are the systems of chartSystems present in rs.
func chartGroups(rs []result) []string {
	var out []string
	for _, n := range chartSystems {
		if slices.ContainsFunc(rs, func(r result) bool { return r.Name == n }) {
			out = append(out, n)
		}
	}
	return out
}

func find(rs []result, name, b string) (result, bool) {
	i := slices.IndexFunc(rs, func(r result) bool { return r.Name == name && r.Body == b })
	if i < 0 {
		return result{}, false
	}
	return rs[i], true
}

// niceCeil is the smallest 1, 2 or 5 × 10^k at or above v (1 for v <= 0).
func niceCeil(v float64) float64 {
	if v <= 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v*(1-1e-12) {
			return m * p
		}
	}
	return 10 * p
}

// layoutBars places the bars of series for groups in the panel x0..x1 on
// the axis at chartBottom, scaled so that vmax reaches chartTop+20. A
// missing row leaves a gap.
func layoutBars(rs []result, groups []string, series []chartSeries, x0, x1 int, vmax float64) []bar {
	groupW := (x1 - x0) / max(len(groups), 1)
	barW := max((groupW-20)/max(len(series), 1), 2)
	span := float64(chartBottom - chartTop - 20)
	var out []bar
	for g, name := range groups {
		left := x0 + g*groupW + (groupW-barW*len(series))/2
		for i, s := range series {
			r, ok := find(rs, name, s.body)
			if !ok {
				continue
			}
			v := s.value(r)
			h := int(math.Round(v / vmax * span))
			out = append(out, bar{
				rect:  image.Rect(left+i*barW, chartBottom-h, left+(i+1)*barW-2, chartBottom),
				col:   s.col,
				value: v,
			})
		}
	}
	return out
}

// renderChart draws the chart of rs.
func renderChart(rs []result) (*image.RGBA, error) {
	groups := chartGroups(rs)
	bodies := chartBodies(rs)
	if len(groups) == 0 || len(bodies) == 0 {
		return nil, errNoChartData
	}
	img := image.NewRGBA(image.Rect(0, 0, chartW, chartH))
	draw.Draw(img, img.Bounds(), image.NewUniform(colWhite), image.Point{}, draw.Src)
	text(img, 20, 24, colInk, "Trellis bench: client -> proxy -> mTLS -> proxy -> server, on loopback")

	var lat, rps []chartSeries
	for i, b := range bodies {
		c := bodyColors[i%len(bodyColors)]
		lat = append(lat,
			chartSeries{"p50 " + b.name, b.name, c[0], func(r result) float64 { return r.P50 }},
			chartSeries{"p99 " + b.name, b.name, c[1], func(r result) float64 { return r.P99 }})
		rps = append(rps, chartSeries{b.name, b.name, c[0], func(r result) float64 { return r.MaxRPS }})
	}
	panel(img, rs, groups, lat, 70, 690, "latency at the fixed rate, ms", 2)
	panel(img, rs, groups, rps, 770, 1180, "max req/s (light shade of each body)", 0)
	legend(img, 20, 44, lat)
	return img, nil
}

// panel draws one panel: grid, axis labels, bars with their values, group
// names.
func panel(img *image.RGBA, rs []result, groups []string, series []chartSeries, x0, x1 int, title string, decimals int) {
	vmax := 0.0
	for _, name := range groups {
		for _, s := range series {
			if r, ok := find(rs, name, s.body); ok {
				vmax = max(vmax, s.value(r))
			}
		}
	}
	vmax = niceCeil(vmax)
	text(img, x0, chartTop-4, colInk, title)
	span := chartBottom - chartTop - 20
	for i := 0; i <= 5; i++ {
		y := chartBottom - span*i/5
		fill(img, image.Rect(x0, y, x1, y+1), colGrid)
		label := strconv.FormatFloat(vmax*float64(i)/5, 'f', -1, 64)
		text(img, x0-8-7*len(label), y+4, colInk, label)
	}
	fill(img, image.Rect(x0, chartBottom, x1, chartBottom+1), colInk)
	for _, b := range layoutBars(rs, groups, series, x0, x1, vmax) {
		fill(img, b.rect, b.col)
		v := label(b.value, decimals)
		// Values stand above their bars, each in its own column of text.
		cx := (b.rect.Min.X + b.rect.Max.X) / 2
		if b.rect.Dx() >= 7*len(v) {
			text(img, cx-7*len(v)/2, b.rect.Min.Y-3, colInk, v)
		} else {
			vertical(img, cx-3, b.rect.Min.Y-4, colInk, v)
		}
	}
	groupW := (x1 - x0) / len(groups)
	for g, name := range groups {
		cx := x0 + g*groupW + groupW/2
		text(img, cx-7*len(name)/2, chartBottom+18, colInk, name)
	}
}

// label formats a bar's value: decimals places, one fewer from 10 up (a
// latency of 16.3 ms needs no third digit, and must fit its bar).
func label(v float64, decimals int) string {
	if decimals > 1 && v >= 10 {
		decimals = 1
	}
	return strconv.FormatFloat(v, 'f', decimals, 64)
}

func legend(img *image.RGBA, x, y int, series []chartSeries) {
	for _, s := range series {
		fill(img, image.Rect(x, y-9, x+12, y+1), s.col)
		text(img, x+16, y, colInk, s.label)
		x += 16 + 7*len(s.label) + 18
	}
}

func fill(img *image.RGBA, r image.Rectangle, c color.RGBA) {
	draw.Draw(img, r, image.NewUniform(c), image.Point{}, draw.Src)
}

// text draws s with its baseline at y.
func text(img *image.RGBA, x, y int, c color.RGBA, s string) {
	d := font.Drawer{Dst: img, Src: image.NewUniform(c), Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
	d.DrawString(s)
}

// vertical draws s one character a line, upwards, ending at y: a value
// over a bar too narrow for it.
func vertical(img *image.RGBA, x, y int, c color.RGBA, s string) {
	for i := len(s) - 1; i >= 0; i-- {
		text(img, x, y, c, s[i:i+1])
		y -= 11
	}
}

// writeChart renders the chart of rs to path; with nothing to chart it
// writes nothing and says so.
func writeChart(path string, rs []result) (bool, error) {
	img, err := renderChart(rs)
	if errors.Is(err, errNoChartData) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return false, fmt.Errorf("chart: %w", err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		return false, fmt.Errorf("chart: %w", err)
	}
	return true, nil
}
