package server

// Tests of this package send many refused requests from 127.0.0.1 in a row
// (tables of bad input); only the throttle's own tests, which set
// Throttle.Burst, should meet the throttle.
func init() { throttleBurstDefault = 1 << 20 }
