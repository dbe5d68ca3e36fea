;; Full-vocabulary passes of the sampling op (sample.ts), 128-bit WebAssembly SIMD, over logits rows
;; that live in this module's memory: the CPU backend allocates the model's logits buffer (the one
;; tensor allocated with samplingInput) as a shared WebAssembly.Memory and instantiates this module
;; over it, so nothing is copied.
;;   rowmax  the largest of n f32 at byte address $p (-inf for n = 0)
;;   argmax  the index of the first occurrence of that largest value (0 for n = 0 or all -inf)
;; Both read the row once, with four independent f32x4 accumulators (no serial dependency between
;; vectors). NaN logits are not expected (the forward pass makes none).
(module
  (import "env" "mem" (memory 1 65536 shared))

  (func $rowmax (export "rowmax") (param $p i32) (param $n i32) (result f32)
    (local $end i32) (local $vend i32) (local $m0 v128) (local $m1 v128) (local $m2 v128) (local $m3 v128) (local $m f32)
    (local.set $end (i32.add (local.get $p) (i32.shl (local.get $n) (i32.const 2))))
    (local.set $vend (i32.add (local.get $p) (i32.shl (i32.and (local.get $n) (i32.const -16)) (i32.const 2))))
    (local.set $m0 (f32x4.splat (f32.const -inf)))
    (local.set $m1 (local.get $m0))
    (local.set $m2 (local.get $m0))
    (local.set $m3 (local.get $m0))
    (block $done
      (loop $vec
        (br_if $done (i32.ge_u (local.get $p) (local.get $vend)))
        (local.set $m0 (f32x4.max (local.get $m0) (v128.load align=4 (local.get $p))))
        (local.set $m1 (f32x4.max (local.get $m1) (v128.load offset=16 align=4 (local.get $p))))
        (local.set $m2 (f32x4.max (local.get $m2) (v128.load offset=32 align=4 (local.get $p))))
        (local.set $m3 (f32x4.max (local.get $m3) (v128.load offset=48 align=4 (local.get $p))))
        (local.set $p (i32.add (local.get $p) (i32.const 64)))
        (br $vec)))
    (local.set $m0 (f32x4.max (f32x4.max (local.get $m0) (local.get $m1)) (f32x4.max (local.get $m2) (local.get $m3))))
    (local.set $m
      (f32.max
        (f32.max (f32x4.extract_lane 0 (local.get $m0)) (f32x4.extract_lane 1 (local.get $m0)))
        (f32.max (f32x4.extract_lane 2 (local.get $m0)) (f32x4.extract_lane 3 (local.get $m0)))))
    (block $tail_done
      (loop $tail
        (br_if $tail_done (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $m (f32.max (local.get $m) (f32.load (local.get $p))))
        (local.set $p (i32.add (local.get $p) (i32.const 4)))
        (br $tail)))
    (local.get $m))

  ;; One pass: four (best value, its index) pairs of f32x4, each lane keeping its first maximum
  ;; (strict >), then the sixteen candidates and the scalar tail reduced to the first maximum.
  (func (export "argmax") (param $p i32) (param $n i32) (result i32)
    (local $base i32) (local $end i32) (local $vend i32)
    (local $b0 v128) (local $b1 v128) (local $b2 v128) (local $b3 v128)
    (local $i0 v128) (local $i1 v128) (local $i2 v128) (local $i3 v128)
    (local $c0 v128) (local $v v128) (local $g v128)
    (local $m f32) (local $mi i32) (local $k i32) (local $x f32) (local $xi i32)
    (local.set $base (local.get $p))
    (local.set $end (i32.add (local.get $p) (i32.shl (local.get $n) (i32.const 2))))
    (local.set $vend (i32.add (local.get $p) (i32.shl (i32.and (local.get $n) (i32.const -16)) (i32.const 2))))
    (local.set $b0 (f32x4.splat (f32.const -inf)))
    (local.set $b1 (local.get $b0))
    (local.set $b2 (local.get $b0))
    (local.set $b3 (local.get $b0))
    (local.set $i0 (i32x4.splat (i32.const 0)))
    (local.set $i1 (local.get $i0))
    (local.set $i2 (local.get $i0))
    (local.set $i3 (local.get $i0))
    (local.set $c0 (v128.const i32x4 0 1 2 3))
    (block $done
      (loop $vec
        (br_if $done (i32.ge_u (local.get $p) (local.get $vend)))
        (local.set $v (v128.load align=4 (local.get $p)))
        (local.set $g (f32x4.gt (local.get $v) (local.get $b0)))
        (local.set $b0 (v128.bitselect (local.get $v) (local.get $b0) (local.get $g)))
        (local.set $i0 (v128.bitselect (local.get $c0) (local.get $i0) (local.get $g)))
        (local.set $v (v128.load offset=16 align=4 (local.get $p)))
        (local.set $g (f32x4.gt (local.get $v) (local.get $b1)))
        (local.set $b1 (v128.bitselect (local.get $v) (local.get $b1) (local.get $g)))
        (local.set $i1 (v128.bitselect (i32x4.add (local.get $c0) (v128.const i32x4 4 4 4 4)) (local.get $i1) (local.get $g)))
        (local.set $v (v128.load offset=32 align=4 (local.get $p)))
        (local.set $g (f32x4.gt (local.get $v) (local.get $b2)))
        (local.set $b2 (v128.bitselect (local.get $v) (local.get $b2) (local.get $g)))
        (local.set $i2 (v128.bitselect (i32x4.add (local.get $c0) (v128.const i32x4 8 8 8 8)) (local.get $i2) (local.get $g)))
        (local.set $v (v128.load offset=48 align=4 (local.get $p)))
        (local.set $g (f32x4.gt (local.get $v) (local.get $b3)))
        (local.set $b3 (v128.bitselect (local.get $v) (local.get $b3) (local.get $g)))
        (local.set $i3 (v128.bitselect (i32x4.add (local.get $c0) (v128.const i32x4 12 12 12 12)) (local.get $i3) (local.get $g)))
        (local.set $c0 (i32x4.add (local.get $c0) (v128.const i32x4 16 16 16 16)))
        (local.set $p (i32.add (local.get $p) (i32.const 64)))
        (br $vec)))
    ;; The best of the sixteen lanes: the largest value, the lowest index among equals.
    (local.set $m (f32.const -inf))
    (local.set $mi (i32.const 0))
    (local.set $k (i32.const 0))
    (block $lanes_done
      (loop $lanes
        (br_if $lanes_done (i32.ge_u (local.get $k) (i32.const 16)))
        (local.set $x (call $lane_f (local.get $b0) (local.get $b1) (local.get $b2) (local.get $b3) (local.get $k)))
        (local.set $xi (call $lane_i (local.get $i0) (local.get $i1) (local.get $i2) (local.get $i3) (local.get $k)))
        (if (i32.or (f32.gt (local.get $x) (local.get $m))
                    (i32.and (f32.eq (local.get $x) (local.get $m)) (i32.lt_u (local.get $xi) (local.get $mi))))
          (then (local.set $m (local.get $x)) (local.set $mi (local.get $xi))))
        (local.set $k (i32.add (local.get $k) (i32.const 1)))
        (br $lanes)))
    ;; The tail comes after every vector element, so only a strictly larger value wins there.
    (block $tail_done
      (loop $tail
        (br_if $tail_done (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $x (f32.load (local.get $p)))
        (if (f32.gt (local.get $x) (local.get $m))
          (then (local.set $m (local.get $x)) (local.set $mi (i32.shr_u (i32.sub (local.get $p) (local.get $base)) (i32.const 2)))))
        (local.set $p (i32.add (local.get $p) (i32.const 4)))
        (br $tail)))
    (if (f32.eq (local.get $m) (f32.const -inf)) (then (return (i32.const 0))))
    (local.get $mi))

  ;; Lane k (0..15) of the four value accumulators, spilled through memory-free extracts.
  (func $lane_f (param $a v128) (param $b v128) (param $c v128) (param $d v128) (param $k i32) (result f32)
    (local $v v128)
    (local.set $v (select (local.get $a) (select (local.get $b) (select (local.get $c) (local.get $d) (i32.lt_u (local.get $k) (i32.const 12))) (i32.lt_u (local.get $k) (i32.const 8))) (i32.lt_u (local.get $k) (i32.const 4))))
    (block $l3 (block $l2 (block $l1 (block $l0
      (br_table $l0 $l1 $l2 $l3 (i32.and (local.get $k) (i32.const 3))))
      (return (f32x4.extract_lane 0 (local.get $v))))
      (return (f32x4.extract_lane 1 (local.get $v))))
      (return (f32x4.extract_lane 2 (local.get $v))))
    (f32x4.extract_lane 3 (local.get $v)))

  (func $lane_i (param $a v128) (param $b v128) (param $c v128) (param $d v128) (param $k i32) (result i32)
    (local $v v128)
    (local.set $v (select (local.get $a) (select (local.get $b) (select (local.get $c) (local.get $d) (i32.lt_u (local.get $k) (i32.const 12))) (i32.lt_u (local.get $k) (i32.const 8))) (i32.lt_u (local.get $k) (i32.const 4))))
    (block $l3 (block $l2 (block $l1 (block $l0
      (br_table $l0 $l1 $l2 $l3 (i32.and (local.get $k) (i32.const 3))))
      (return (i32x4.extract_lane 0 (local.get $v))))
      (return (i32x4.extract_lane 1 (local.get $v))))
      (return (i32x4.extract_lane 2 (local.get $v))))
    (i32x4.extract_lane 3 (local.get $v))))
