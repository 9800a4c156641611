// Every sparse op and encoding in its custom textual form; test_sparse_roundtrip
// parses, prints and re-parses this file and checks that no op is missing.
builtin.module {
  func.func @main(%x: tensor<4x8xf32>, %y: tensor<8xf32>, %i: tensor<4xi64>, %b: tensor<4x8xi1>, %h: tensor<4x8xf16>) -> tensor<4x8xf32> {
    %c0 = sparse.constant {value = dense<1.000000e+00> : tensor<4x8xf32>} : tensor<4x8xf32>
    %c1 = sparse.constant {value = dense<[[1.000000e+00, 0.000000e+00, 0.000000e+00, 2.000000e+00]]> : tensor<1x4xf32>} : tensor<1x4xf32, #sparse.nm<n = 2, m = 4, axis = 1>>
    %c2 = sparse.constant {value = dense<[1, 2]> : tensor<2xi64>} : tensor<2xi64, #sparse.dense>
    %cv0 = sparse.convert %x : tensor<4x8xf32> -> tensor<4x8xf32, #sparse.nm<n = 1, m = 4, axis = -1>>
    %cv1 = sparse.convert %x : tensor<4x8xf32> -> tensor<4x8xf32, #sparse.block<block = [2, 4], grid = [2, 2], layout = [1, 0, 0, 1]>>
    %cv2 = sparse.convert %x : tensor<4x8xf32> -> tensor<4x8xf32, #sparse.dynamic<mode = "topk", k = 2, threshold = 0.0, axis = -1, fill = -inf>>
    %cv3 = sparse.convert %x : tensor<4x8xf32> -> tensor<4x8xf32, #sparse.dynamic<mode = "threshold", k = 0, threshold = 0.5, axis = 1, fill = 0.0>>
    %cv4 = sparse.convert %x : tensor<4x8xf32> -> tensor<4x8xf32, #sparse.compressed<levels = ["dense", "compressed"], pos = 32, crd = 16>>
    %cv5 = sparse.convert %c0 : tensor<4x8xf32> -> tensor<4x8xf32, #sparse.dense>
    %sq = sparse.constant {value = dense<2.000000e+00> : tensor<8x8xf32>} : tensor<8x8xf32>
    %cv6 = sparse.convert %sq : tensor<8x8xf32> -> tensor<8x8xf32, #sparse.butterfly<kind = "monarch", factors = 2, block = 2, perm = "none">>
    %cv7 = sparse.convert %sq : tensor<8x8xf32> -> tensor<8x8xf32, #sparse.butterfly<kind = "block", factors = 3, block = 1, perm = "bitrev">>
    %bw = sparse.constant {value = dense<1.000000e+00> : tensor<1x2x4x4xf32>} : tensor<1x2x4x4xf32>
    %bs = sparse.butterfly_stage %x, %bw {radix = 2 : i64, stride = 2 : i64, block = 2 : i64} : tensor<4x8xf32>, tensor<1x2x4x4xf32> -> tensor<4x8xf32>
    %bm0 = sparse.constant {value = dense<1.000000e+00> : tensor<4x1x2x2xf32>} : tensor<4x1x2x2xf32>
    %bm1 = sparse.constant {value = dense<1.000000e+00> : tensor<1x2x4x4xf32>} : tensor<1x2x4x4xf32>
    %bm = sparse.butterfly_matmul %x[%bm0, %bm1] {structure = #sparse.butterfly<kind = "monarch", factors = 2, block = 2, perm = "none">} : tensor<4x8xf32>[tensor<4x1x2x2xf32>, tensor<1x2x4x4xf32>] -> tensor<4x8xf32>
    %ff = sparse.fourier %x {axes = array<i64: 0, 1>} : tensor<4x8xf32> -> tensor<4x8xf32>
    %ca = sparse.cast %x : tensor<4x8xf32> -> tensor<4x8xf16>
    %u0 = sparse.neg %x : tensor<4x8xf32> -> tensor<4x8xf32>
    %u1 = sparse.abs %x : tensor<4x8xf32> -> tensor<4x8xf32>
    %u2 = sparse.exp %x : tensor<4x8xf32> -> tensor<4x8xf32>
    %u3 = sparse.log %x : tensor<4x8xf32> -> tensor<4x8xf32>
    %u4 = sparse.sqrt %x : tensor<4x8xf32> -> tensor<4x8xf32>
    %u5 = sparse.rsqrt %x : tensor<4x8xf32> -> tensor<4x8xf32>
    %u6 = sparse.reciprocal %x : tensor<4x8xf32> -> tensor<4x8xf32>
    %u7 = sparse.tanh %x : tensor<4x8xf32> -> tensor<4x8xf32>
    %u8 = sparse.erf %x : tensor<4x8xf32> -> tensor<4x8xf32>
    %u9 = sparse.sigmoid %x : tensor<4x8xf32> -> tensor<4x8xf32>
    %u10 = sparse.relu %x : tensor<4x8xf32> -> tensor<4x8xf32>
    %u11 = sparse.floor %x : tensor<4x8xf32> -> tensor<4x8xf32>
    %u12 = sparse.ceil %x : tensor<4x8xf32> -> tensor<4x8xf32>
    %u13 = sparse.not %b : tensor<4x8xi1> -> tensor<4x8xi1>
    %u14 = sparse.isnan %x : tensor<4x8xf32> -> tensor<4x8xi1>
    %u15 = sparse.isinf %x : tensor<4x8xf32> -> tensor<4x8xi1>
    %u16 = sparse.gelu %x : tensor<4x8xf32> -> tensor<4x8xf32>
    %u17 = sparse.gelu %x {approximate = "tanh"} : tensor<4x8xf32> -> tensor<4x8xf32>
    %b0 = sparse.add %x, %y : tensor<4x8xf32>, tensor<8xf32> -> tensor<4x8xf32>
    %b1 = sparse.sub %x, %y : tensor<4x8xf32>, tensor<8xf32> -> tensor<4x8xf32>
    %b2 = sparse.mul %x, %y : tensor<4x8xf32>, tensor<8xf32> -> tensor<4x8xf32>
    %b3 = sparse.div %x, %y : tensor<4x8xf32>, tensor<8xf32> -> tensor<4x8xf32>
    %b4 = sparse.pow %x, %y : tensor<4x8xf32>, tensor<8xf32> -> tensor<4x8xf32>
    %b5 = sparse.max %x, %y : tensor<4x8xf32>, tensor<8xf32> -> tensor<4x8xf32>
    %b6 = sparse.min %x, %y : tensor<4x8xf32>, tensor<8xf32> -> tensor<4x8xf32>
    %b7 = sparse.and %b, %b : tensor<4x8xi1>, tensor<4x8xi1> -> tensor<4x8xi1>
    %b8 = sparse.or %b, %b : tensor<4x8xi1>, tensor<4x8xi1> -> tensor<4x8xi1>
    %b9 = sparse.xor %b, %b : tensor<4x8xi1>, tensor<4x8xi1> -> tensor<4x8xi1>
    %b10 = sparse.cmp %x, %y {predicate = "lt"} : tensor<4x8xf32>, tensor<8xf32> -> tensor<4x8xi1>
    %w = sparse.where %b, %x, %y : tensor<4x8xi1>, tensor<4x8xf32>, tensor<8xf32> -> tensor<4x8xf32>
    %t = sparse.transpose %x {permutation = array<i64: 1, 0>} : tensor<4x8xf32> -> tensor<8x4xf32>
    %mm = sparse.matmul %x, %t : tensor<4x8xf32>, tensor<8x4xf32> -> tensor<4x4xf32>
    %mv = sparse.matmul %x, %y : tensor<4x8xf32>, tensor<8xf32> -> tensor<4xf32>
    %ct = sparse.contract %x, %x {equation = "ij,kj->ik"} : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x4xf32>
    %ce = sparse.contract %x {equation = "...j->..."} : (tensor<4x8xf32>) -> tensor<4xf32>
    %r0 = sparse.reduce %x {kind = "max", axes = array<i64: 1>, keepdims} : tensor<4x8xf32> -> tensor<4x1xf32>
    %r1 = sparse.reduce %x {kind = "sum", axes = array<i64: 0, 1>} : tensor<4x8xf32> -> tensor<f32>
    %sm = sparse.softmax %x {axis = -1 : i64} : tensor<4x8xf32> -> tensor<4x8xf32>
    %ls = sparse.log_softmax %x {axis = 0 : i64} : tensor<4x8xf32> -> tensor<4x8xf32>
    %ln0 = sparse.layer_norm %x, %y {axis = -1 : i64, epsilon = 1.000000e-05 : f64} : tensor<4x8xf32>, tensor<8xf32> -> tensor<4x8xf32>
    %ln1 = sparse.layer_norm %x, %y bias %y : tensor<8xf32> {axis = 1 : i64, epsilon = 1.000000e-05 : f64} : tensor<4x8xf32>, tensor<8xf32> -> tensor<4x8xf32>
    %rs = sparse.reshape %x : tensor<4x8xf32> -> tensor<2x2x8xf32>
    %bc = sparse.broadcast %y : tensor<8xf32> -> tensor<3x4x8xf32>
    %sl = sparse.slice %x {starts = array<i64: 0, 7>, ends = array<i64: 4, -1>, steps = array<i64: 2, -3>} : tensor<4x8xf32> -> tensor<2x3xf32>
    %cc = sparse.concat %x, %x {axis = 0 : i64} : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<8x8xf32>
    %g = sparse.gather %x, %i {axis = 1 : i64} : tensor<4x8xf32>, tensor<4xi64> -> tensor<4x4xf32>
    %pd = sparse.pad %x {pads = array<i64: 0, 1, 0, 2>, value = 0.000000e+00 : f64} : tensor<4x8xf32> -> tensor<4x11xf32>
    %tr0 = sparse.trilu %x {k = 0 : i64} : tensor<4x8xf32> -> tensor<4x8xf32>
    %tr1 = sparse.trilu %b {k = 1 : i64, upper} : tensor<4x8xi1> -> tensor<4x8xi1>
    %q = sparse.reshape %x : tensor<4x8xf32> -> tensor<1x2x4x4xf32>
    %kv = sparse.slice %q {starts = array<i64: 0, 0, 0, 0>, ends = array<i64: 1, 1, 4, 4>, steps = array<i64: 1, 1, 1, 1>} : tensor<1x2x4x4xf32> -> tensor<1x1x4x4xf32>
    %m = sparse.reshape %b : tensor<4x8xi1> -> tensor<1x1x4x8xi1>
    %mk = sparse.slice %m {starts = array<i64: 0, 0, 0, 0>, ends = array<i64: 1, 1, 4, 4>, steps = array<i64: 1, 1, 1, 1>} : tensor<1x1x4x8xi1> -> tensor<1x1x4x4xi1>
    %a0 = sparse.attention %q, %q, %q {scale = 5.000000e-01 : f64, heads = 2 : i64, kv_heads = 2 : i64, causal_offset = 0 : i64, softcap = 0.000000e+00 : f64} : tensor<1x2x4x4xf32>, tensor<1x2x4x4xf32>, tensor<1x2x4x4xf32> -> tensor<1x2x4x4xf32>
    %a1 = sparse.attention %q, %kv, %kv mask %mk : tensor<1x1x4x4xi1> {scale = 5.000000e-01 : f64, heads = 2 : i64, kv_heads = 1 : i64, causal, causal_offset = 1 : i64, softcap = 3.000000e+01 : f64} : tensor<1x2x4x4xf32>, tensor<1x1x4x4xf32>, tensor<1x1x4x4xf32> -> tensor<1x2x4x4xf32>
    %a2 = sparse.attention %q, %q, %q {scale = 5.000000e-01 : f64, heads = 2 : i64, kv_heads = 2 : i64, causal_offset = 0 : i64, softcap = 0.000000e+00 : f64, fusion = "online", row_block = 4 : i64, key_block = 2 : i64} : tensor<1x2x4x4xf32>, tensor<1x2x4x4xf32>, tensor<1x2x4x4xf32> -> tensor<1x2x4x4xf32>
    func.return %b0 : tensor<4x8xf32>
  }
}
