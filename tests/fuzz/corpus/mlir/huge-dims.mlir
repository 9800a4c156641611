builtin.module {
  func.func @main(%x: tensor<1000000000x1000000000xf32> {attnc.name = "x"}, %k: tensor<1000000000x1000000000xi1> {attnc.name = "keep"}) -> (tensor<1000000000x1000000000xf32> {attnc.name = "y"}) {
    %a = sparse.neg %x : tensor<1000000000x1000000000xf32> -> tensor<1000000000x1000000000xf32>
    %b = sparse.where %k, %a, %x : tensor<1000000000x1000000000xi1>, tensor<1000000000x1000000000xf32>, tensor<1000000000x1000000000xf32> -> tensor<1000000000x1000000000xf32>
    func.return %b : tensor<1000000000x1000000000xf32>
  }
}
