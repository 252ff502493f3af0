// Package archtest holds a test that enforces the import direction of
// DESIGN.md ("Import direction"): provider imports nothing of this module;
// the taskscaler library and the connector import only provider; every
// provider implementation (provider/*) imports only provider (the
// conformance suite may also use the fake); and only internal/* and cmd/*
// import internal packages. Only non-test imports are checked: tests may use
// the fake, the conformance suite or the connector wherever they need them.
// Packages that do not exist yet are skipped. Run it with
// `go test ./internal/archtest`.
//
// The package has no code of its own; everything is in its tests.
package archtest
