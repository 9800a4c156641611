builtin.module {
  func.func @main(%x: tensor<?x3xf32> {attnc.name = "x"}, %k: tensor<2x3xi1> {attnc.name = "keep"}) -> (tensor<?x3xf32> {attnc.name = "y"}) {
    %a = sparse.neg %x : tensor<?x3xf32> -> tensor<?x3xf32>
    %b = sparse.where %k, %a, %x : tensor<2x3xi1>, tensor<?x3xf32>, tensor<?x3xf32> -> tensor<?x3xf32>
    func.return %b : tensor<?x3xf32>
  }
}
