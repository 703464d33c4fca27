// Package defaults fills a configuration's zero fields from its defaults: the
// one way the module's Config types (coordinator, registry, watcher) apply
// their DefaultConfig, as hashicorp/raft's DefaultConfig and ValidateConfig
// do. Each Config's Validate then checks the result, the configuration that
// will run, with its cross-field rules.
package defaults

import "reflect"

// Fill returns c with each exported field that is zero (reflect's IsZero: 0,
// "", nil) set to the same field of d. Non-zero fields, negative durations
// among them, are kept as given, so that Validate can reject them. T must be
// a struct type.
func Fill[T any](c, d T) T {
	cv := reflect.ValueOf(&c).Elem()
	dv := reflect.ValueOf(d)
	for i := 0; i < cv.NumField(); i++ {
		f := cv.Field(i)
		if f.CanSet() && f.IsZero() {
			f.Set(dv.Field(i))
		}
	}
	return c
}
