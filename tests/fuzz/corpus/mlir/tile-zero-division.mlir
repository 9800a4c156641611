builtin.module {
  func.func @main(%q: tensor<0x4x8x16xf32> {attnc.name = "q"}, %k: tensor<0x4x8x16xf32> {attnc.name = "k"}, %v: tensor<0x4x8x16xf32> {attnc.name = "v"}, %m: tensor<1x1x8x8xi1> {attnc.name = "m"}) -> (tensor<0x4x8x16xf32> {attnc.name = "o"}) {
    %o = sparse.attention %q, %k, %v mask %m : tensor<1x1x8x8xi1> {scale = 0.25 : f64, heads = 4 : i64, kv_heads = 4 : i64, causal, causal_offset = 0 : i64, softcap = 0.0 : f64} : tensor<0x4x8x16xf32>, tensor<0x4x8x16xf32>, tensor<0x4x8x16xf32> -> tensor<0x4x8x16xf32>
    func.return %o : tensor<0x4x8x16xf32>
  }
}
